"""Shared test set-up: a throwaway Airflow home (SQLite) and the sandbox fixture.

Airflow reads its configuration when first imported, so the environment is set here,
before any test module imports it.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_home = os.environ.get("SKYSHARE_TEST_AIRFLOW_HOME") or tempfile.mkdtemp(prefix="skyshare-airflow-")
os.environ["SKYSHARE_TEST_AIRFLOW_HOME"] = _home
os.environ["AIRFLOW_HOME"] = _home
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")
# As the test beds' Airflow (and docs/operations.md) recommend: deferrable operators defer.
os.environ.setdefault("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "True")

pytest_plugins = ["airflow_provider_skyshare.sandbox.pytest_plugin", "tests.helpers.fixtures"]


# -- order and per-folder timing: `./dev test` fails fast and shows a slow or stuck folder --------
ORDER = ("tests/unit", "tests/integration", "tests/e2e")  # pure first, real Airflow last
_spans: dict[str, list[float]] = {}  # folder -> [first test started, last test finished]


def _folder(nodeid: str) -> str:
    parts = nodeid.split("::")[0].split("/")
    return "/".join(parts[:2]) if len(parts) > 2 else parts[0]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {folder: i for i, folder in enumerate(ORDER)}
    items.sort(key=lambda item: rank.get(_folder(item.nodeid), len(ORDER)))  # stable


def pytest_runtest_logstart(nodeid: str, location: tuple[str, int | None, str]) -> None:
    folder = _folder(nodeid)
    if folder not in _spans:
        print(f"\n==> {folder}", flush=True)
        _spans[folder] = [time.monotonic(), time.monotonic()]


def pytest_runtest_logfinish(nodeid: str, location: tuple[str, int | None, str]) -> None:
    _spans[_folder(nodeid)][1] = time.monotonic()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _spans:
        terminalreporter.write_sep("-", "time per folder")
        for folder, (start, end) in _spans.items():
            terminalreporter.write_line(f"{folder:<20} {end - start:7.1f}s")
