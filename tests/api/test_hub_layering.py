"""The hub's adapters and services keep to their layers (issue 8: services own the unit of work).

The hub's HTTP adapters import neither SQLAlchemy nor ``fleetpki.store`` and open no
transaction; the hub's services reach the data through repositories only (they may
name the store's entity types, never SQLAlchemy). ``hub_registry`` still holds
``authenticate_device``, which reads with a session until it moves to
``hub_authentication``; it is checked once that move lands.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fleetpki

PACKAGE = Path(fleetpki.__file__).parent
ADAPTERS = ["api/hub_service.py", "api/hub_v1.py", "api/hub_websocket.py"]
SERVICES = [
    "services/hub_devices.py",
    "services/hub_twins.py",
    "services/hub_statistics.py",
    "services/hub_trust.py",
    "services/hub_messages.py",
    "services/hub_sas.py",
    "services/hub_methods.py",
    "services/hub_etags.py",
]
ENTITY_MODULES = {"fleetpki.store.models", "fleetpki.store.hub_models"}


def _imports(relative: str) -> set[str]:
    tree = ast.parse((PACKAGE / relative).read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _calls_transaction(relative: str) -> bool:
    tree = ast.parse((PACKAGE / relative).read_text())
    return any(
        isinstance(node, ast.Attribute) and node.attr == "transaction" for node in ast.walk(tree)
    )


@pytest.mark.parametrize("relative", ADAPTERS)
def test_hub_adapters_import_no_orm_and_open_no_transaction(relative: str) -> None:
    imported = _imports(relative)
    assert not {m for m in imported if m == "sqlalchemy" or m.startswith("sqlalchemy.")}
    assert not {m for m in imported if m == "fleetpki.store" or m.startswith("fleetpki.store.")}
    assert not _calls_transaction(relative)


@pytest.mark.parametrize("relative", SERVICES)
def test_hub_services_use_repositories_only(relative: str) -> None:
    imported = _imports(relative)
    assert not {m for m in imported if m == "sqlalchemy" or m.startswith("sqlalchemy.")}
    store = {m for m in imported if m == "fleetpki.store" or m.startswith("fleetpki.store.")}
    assert store <= ENTITY_MODULES
