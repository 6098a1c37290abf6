"""Every portal route calls one service method: read from the source of each route.

A route parses, calls one use case (``fleet.<service>.<method>(...)``) and renders; a
page that shows many things gets them from one ``portal_pages`` method. This test reads
each route function of ``fleetpki.portal`` and counts the service calls it makes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fleetpki.portal

PORTAL = Path(fleetpki.portal.__file__).parent


def _is_fleet(node: ast.expr) -> bool:
    """``fleet`` or ``get_fleet(request)``."""
    if isinstance(node, ast.Name):
        return node.id == "fleet"
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "get_fleet"
    )


def _service_calls(function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    """``service.method`` for each ``fleet.service.method`` the function refers to."""
    calls = []
    for node in ast.walk(function):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and _is_fleet(node.value.value)
        ):
            calls.append(f"{node.value.attr}.{node.attr}")
    return calls


def _routes() -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    found = []
    for path in sorted(PORTAL.glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and any(
                isinstance(d, ast.Call)
                and isinstance(d.func, ast.Attribute)
                and isinstance(d.func.value, ast.Name)
                and d.func.value.id == "router"
                for d in node.decorator_list
            ):
                found.append((f"{path.stem}.{node.name}", node))
    return found


ROUTES = _routes()


def test_the_portal_has_its_routes() -> None:
    names = {name for name, _ in ROUTES}
    assert {"dashboard.dashboard", "hubs.trust", "certificates.revoke"} <= names
    assert len(ROUTES) > 25


@pytest.mark.parametrize(("name", "function"), ROUTES, ids=[name for name, _ in ROUTES])
def test_a_route_calls_one_service_method(
    name: str, function: ast.FunctionDef | ast.AsyncFunctionDef
) -> None:
    calls = _service_calls(function)
    # The certificate search goes straight to one certificate when a serial is given:
    # one call on each path.
    if name == "certificates.search_certificates":
        assert sorted(calls) == ["certificates.get", "portal_pages.certificate_search"]
        return
    assert len(calls) <= 1, f"{name} calls {calls}"
