"""pytest fixture `sandbox`: the running sandbox (brought up when needed), once per session."""

from __future__ import annotations

import pytest

from airflow_provider_skyshare.sandbox.api import Sandbox


@pytest.fixture(scope="session")
def sandbox() -> Sandbox:
    return Sandbox.ensure_up()
