"""Shared test set-up: a throwaway Airflow home (SQLite) and the sandbox fixture.

Airflow reads its configuration when first imported, so the environment is set here,
before any test module imports it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_home = os.environ.get("SKYSHARE_TEST_AIRFLOW_HOME") or tempfile.mkdtemp(prefix="skyshare-airflow-")
os.environ["SKYSHARE_TEST_AIRFLOW_HOME"] = _home
os.environ["AIRFLOW_HOME"] = _home
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")

pytest_plugins = ["airflow_provider_skyshare.sandbox.pytest_plugin", "tests.helpers.fixtures"]
