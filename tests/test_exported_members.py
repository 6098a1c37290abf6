"""The public surface of the split packages: what ``__all__`` names exists, once, where it says."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

PACKAGES = ("fleetpki.device", "fleetpki.hub.protocol")


def _package(name: str) -> ModuleType:
    return importlib.import_module(name)


def _submodules(package: ModuleType) -> list[ModuleType]:
    return [
        importlib.import_module(f"{package.__name__}.{info.name}")
        for info in pkgutil.iter_modules(package.__path__)
    ]


MODULES = [module.__name__ for package in PACKAGES for module in _submodules(_package(package))]


@pytest.mark.parametrize("package_name", PACKAGES)
def test_every_name_in_the_package_all_exists(package_name: str) -> None:
    package = _package(package_name)
    missing = [name for name in package.__all__ if not hasattr(package, name)]
    assert missing == []
    assert len(set(package.__all__)) == len(package.__all__)


@pytest.mark.parametrize("package_name", PACKAGES)
def test_every_public_name_of_the_package_is_in_its_all(package_name: str) -> None:
    # httpx's test_all_imports_are_exported: nothing public is importable by accident.
    package = _package(package_name)
    public = {
        name
        for name, value in vars(package).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"
    }
    assert public == set(package.__all__)


@pytest.mark.parametrize("package_name", PACKAGES)
def test_the_package_re_exports_each_name_from_the_one_module_that_exports_it(
    package_name: str,
) -> None:
    package = _package(package_name)
    owners: dict[str, list[str]] = {}
    for module in _submodules(package):
        for name in module.__all__:
            owners.setdefault(name, []).append(module.__name__)
    assert {name: where for name, where in owners.items() if len(where) > 1} == {}
    for name in package.__all__:
        assert name in owners, f"{name} is in no submodule's __all__"
        module = importlib.import_module(owners[name][0])
        assert getattr(package, name) is getattr(module, name)


@pytest.mark.parametrize("module_name", MODULES)
def test_a_module_all_names_what_the_module_defines(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert isinstance(module.__all__, list)
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []
    # Classes and functions are exported where they are defined, not re-exported on the way.
    elsewhere = [
        name
        for name in module.__all__
        if (inspect.isclass(value := getattr(module, name)) or inspect.isfunction(value))
        and value.__module__ != module_name
    ]
    assert elsewhere == []
