"""The layering of docs/architecture.md, checked on the source: imports point inward.

Each rule names a group of modules and what they must not import. The check reads
every module's import statements (with ``ast``, including those under
``if TYPE_CHECKING``), so it holds for annotations too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "fleetpki"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    package = _module_name(path).rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


MODULES = {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _matches(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@dataclass(frozen=True)
class Rule:
    """Modules under ``layer`` (minus ``exempt``) import nothing under ``forbidden``."""

    name: str
    layer: tuple[str, ...]
    forbidden: tuple[str, ...]
    exempt: tuple[str, ...] = ()
    allowed: tuple[str, ...] = ()


ADAPTERS = (
    "fleetpki.api",
    "fleetpki.cli",
    "fleetpki.portal",
    "fleetpki.demo",
    "fleetpki.hub",
    "fleetpki.connectors",
)
PURE = ("fleetpki.pki", "fleetpki.hub.protocol", "fleetpki.hub.azure", "fleetpki.hub.policy")
FRAMEWORKS = ("sqlalchemy", "alembic", "fastapi", "starlette", "typer", "rich", "uvicorn")

RULES = [
    Rule(
        "adapters reach the data only through services",
        ADAPTERS,
        ("sqlalchemy", "alembic", "fleetpki.store"),
    ),
    Rule(
        "the pure core does no I/O and knows no outer layer",
        PURE,
        (
            *FRAMEWORKS,
            "httpx",
            "psycopg",
            "fleetpki.services",
            "fleetpki.store",
            "fleetpki.api",
            "fleetpki.cli",
            "fleetpki.device",
            "fleetpki.hub.server",
            "fleetpki.hub.broker",
            "fleetpki.application",
        ),
    ),
    Rule(
        "services know the store only through ports and the entity types",
        ("fleetpki.services",),
        (
            "sqlalchemy",
            "alembic",
            "fastapi",
            "typer",
            "fleetpki.store",
            "fleetpki.api",
            "fleetpki.cli",
            "fleetpki.hub.server",
            "fleetpki.hub.broker",
            "fleetpki.application",
            "fleetpki.connectors",
        ),
        # The records are the services' entities; the connector interface is a port
        # (a hub link's implementation is chosen by the application, not a service).
        allowed=(
            "fleetpki.store.models",
            "fleetpki.store.hub_models",
            "fleetpki.connectors.connector",
        ),
    ),
    Rule(
        "the store implements ports and serves no adapter",
        ("fleetpki.store",),
        ("fastapi", "typer", "fleetpki.api", "fleetpki.cli", "fleetpki.hub", "fleetpki.device"),
    ),
    Rule(
        "the device SDK runs on a device: no server-side part",
        ("fleetpki.device",),
        (
            "sqlalchemy",
            "fleetpki.services",
            "fleetpki.store",
            "fleetpki.api",
            "fleetpki.cli",
            "fleetpki.hub",
        ),
        # The Azure dialect and the MQTT codec are pure and shared by both ends.
        allowed=("fleetpki.hub.azure", "fleetpki.hub.protocol"),
    ),
]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_layering(rule: Rule) -> None:
    offences = sorted(
        f"{module} imports {name}"
        for module, names in MODULES.items()
        if _matches(module, rule.layer) and not _matches(module, rule.exempt)
        for name in names
        if _matches(name, rule.forbidden) and not _matches(name, rule.allowed)
    )
    assert offences == [], "\n".join(offences)


def _transaction_calls(module: str) -> list[int]:
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = PACKAGE.parent / module.replace(".", "/") / "__init__.py"
    tree = ast.parse(path.read_text())
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "transaction"
    ]


def test_adapters_open_no_transaction() -> None:
    """A use case is one service call: no adapter opens a unit of work of its own."""
    offences = [
        f"{module}:{line} opens a transaction"
        for module in MODULES
        if _matches(module, ADAPTERS)
        for line in _transaction_calls(module)
    ]
    assert offences == [], "\n".join(offences)


def _module_level_calls(module: str) -> list[str]:
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    if not path.exists():
        return []
    calls = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            calls.append(ast.unparse(node.value.func))
        for decorator in getattr(node, "decorator_list", []):
            target = decorator.func if isinstance(decorator, ast.Call) else decorator
            if ast.unparse(target).endswith("listens_for"):
                calls.append(ast.unparse(target))
    return calls


def test_nothing_is_registered_at_import_time() -> None:
    """No module calls anything at its top level (a listener, a registry, a singleton's setup).

    The application object wires parts together; importing a module has no effect.
    Entry points are exempt: ``__main__`` runs the CLI, the CLI's modules declare their
    Typer commands (local to each command group's ``app``), and Alembic's ``env`` runs
    the migrations it is loaded for.
    """
    entry_points = ("fleetpki.__main__", "fleetpki.cli", "fleetpki.store.migrations.env")
    offences = [
        f"{module} calls {call} when imported"
        for module in MODULES
        if not _matches(module, entry_points)
        for call in _module_level_calls(module)
    ]
    assert offences == [], "\n".join(offences)


def test_the_transaction_check_sees_calls() -> None:
    """The transaction check would catch an offence: the services do open units of work."""
    assert _transaction_calls("fleetpki.services.certificates")
    assert "event.listen" not in _module_level_calls("fleetpki.store.unit_of_work")


def test_the_checker_sees_imports() -> None:
    """The rules would catch an offence: the store itself imports SQLAlchemy."""
    assert "sqlalchemy.orm" in MODULES["fleetpki.store.db"] or any(
        name.startswith("sqlalchemy") for name in MODULES["fleetpki.store.db"]
    )
    assert _matches("fleetpki.store.models.CARecord", ("fleetpki.store",))
    assert not _matches("fleetpki.storefront", ("fleetpki.store",))


def _cycles() -> list[list[str]]:
    graph = {
        module: {
            target
            for name in names
            for target in (name, name.rsplit(".", 1)[0])
            if target in MODULES and target != module
        }
        for module, names in MODULES.items()
    }
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return cycles


def test_no_import_cycles_between_modules() -> None:
    """Package ``__init__`` re-exports aside, no two modules import each other in a ring."""
    rings = [c for c in _cycles() if not any(MODULES.get(m) is None for m in c)]
    real = [" -> ".join(c) for c in rings if not any(_is_package(m) for m in c)]
    assert real == []


def _is_package(module: str) -> bool:
    return (PACKAGE.parent / module.replace(".", "/") / "__init__.py").exists()


def _packages() -> list[str]:
    return sorted(
        _module_name(init)
        for init in PACKAGE.rglob("__init__.py")
        if "__pycache__" not in init.parts
    )


@pytest.mark.parametrize("package", _packages())
def test_each_package_imports_first_in_a_fresh_interpreter(package: str) -> None:
    # An import cycle stays hidden while another package happens to load first (the
    # test run, the CLI); a script or a worker that imports this one first meets it.
    result = subprocess.run(
        [sys.executable, "-c", f"import {package}"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
