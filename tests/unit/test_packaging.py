"""What pyproject.toml and the provider info declare, read from the files: the venv's
installed entry points may come from another checkout."""

from __future__ import annotations

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
