"""What pyproject.toml and the provider info declare, read from the files: the venv's
installed entry points may come from another checkout."""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_skyshare import get_provider_info

tomllib = pytest.importorskip("tomllib")
ROOT = Path(__file__).resolve().parents[2]
UI_PLUGIN = "airflow_provider_skyshare.plugins.ui.SkysharePlugin"


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def entry_point_plugins() -> list[str]:
    group = pyproject()["project"].get("entry-points", {}).get("airflow.plugins", {})
    return [target.replace(":", ".") for target in group.values()]


def provider_info_plugins() -> list[str]:
    return [p["plugin-class"] for p in get_provider_info().get("plugins", [])]


def test_each_plugin_is_registered_once() -> None:
    """Both registrations load the plugin twice with [core] lazy_discover_providers=False:
    Airflow reports the second as an import error."""
    both = set(entry_point_plugins()) & set(provider_info_plugins())
    assert not both, f"registered as an airflow.plugins entry point and in get_provider_info: {both}"


def test_the_ui_plugin_is_an_entry_point() -> None:
    """Airflow 3.3 loads a provider info's plugins only with lazy_discover_providers=False (not
    the default); entry points always."""
    assert entry_point_plugins() == [UI_PLUGIN]
    assert provider_info_plugins() == []


def test_the_provider_info_entry_point_is_declared() -> None:
    providers = pyproject()["project"]["entry-points"]["apache_airflow_provider"]
    assert providers == {"provider_info": "airflow_provider_skyshare:get_provider_info"}


def _requirement_names(requirements: list[str]) -> set[str]:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    return {canonicalize_name(Requirement(r).name) for r in requirements}


def _third_party_imports(path: Path) -> set[str]:
    """Top-level modules a file imports, also inside functions; not the stdlib, not ours."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"airflow_provider_skyshare"}


def test_the_sandbox_imports_only_what_it_declares() -> None:
    """`pip install airflow-provider-skyshare[sandbox]` is enough for `skyshare-sandbox`; its
    pytest plugin runs only under pytest, from the dev extra."""
    from importlib.metadata import packages_distributions

    from packaging.utils import canonicalize_name

    project = pyproject()["project"]
    extras = project["optional-dependencies"]
    declared = _requirement_names(project["dependencies"] + extras["sandbox"])
    dists = packages_distributions()
    missing = []
    for path in sorted((ROOT / "airflow_provider_skyshare" / "sandbox").rglob("*.py")):
        allowed = declared | (_requirement_names(extras["dev"]) if path.name == "pytest_plugin.py"
                              else set())
        for module in sorted(_third_party_imports(path)):
            names = {canonicalize_name(d) for d in dists.get(module, [])}
            if not names & allowed:
                missing.append(f"{path.name}: {module} ({', '.join(sorted(names)) or 'not installed'})")
    assert not missing, "declare in [project.optional-dependencies] sandbox: " + "; ".join(missing)


def test_the_dev_environment_installs_the_sandbox_extra() -> None:
    assert "sandbox" in (ROOT / "dev").read_text().split('-e ".[')[1].split("]")[0].split(",")


@pytest.mark.parametrize("package", ["apache-airflow", "apache-airflow-providers-cncf-kubernetes"])
def test_the_supported_floor_is_what_the_tests_run_on(package: str) -> None:
    """A floor below the installed version would promise versions no test has seen (the
    provider uses Airflow 3.3's teams, team triggerers, CLI groups and TaskSkippedEvent)."""
    import importlib.metadata

    from packaging.requirements import Requirement
    from packaging.version import Version

    floors = [s.version for r in map(Requirement, pyproject()["project"]["dependencies"])
              if r.name == package for s in r.specifier if s.operator == ">="]
    installed = Version(importlib.metadata.version(package))
    assert floors, f"{package} has no floor in pyproject.toml"
    floor = Version(floors[0])
    assert (floor.major, floor.minor) == (installed.major, installed.minor) and floor <= installed, (
        f"pyproject.toml says {package}>={floor}, the tests run on {installed}: raise the floor "
        "to what CI installs, or test the floor too")
