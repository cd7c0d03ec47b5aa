"""A real Airflow for the e2e tests, in the production shape (PostgreSQL, Redis, Celery, two
schedulers, workers and triggerers; scripts/production.py) unless SKYSHARE_E2E_SHAPE says
``standalone`` (airflow standalone on SQLite, the shape of ./dev demo)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from scripts.scenario import Airflow, Shape
from scripts.services import free_port

SHAPE = Shape(os.environ.get("SKYSHARE_E2E_SHAPE", Shape.PRODUCTION.value))


ROOT = Path(__file__).resolve().parents[2]


def _bundles(home: Path) -> dict[str, Path]:
    """The example bundles, each with the test DAGs of tests/e2e/bundles/<bundle> added (bair:
    DAGs that claim rise's identity; both: deferrable=False twins of the seed DAGs)."""
    bundles = {d.name: d for d in sorted((ROOT / "dags").iterdir())
               if d.is_dir() and any(d.glob("*.py"))}
    for extra in sorted((HERE / "bundles").iterdir()):
        copy = home / "bundles" / extra.name
        copy.mkdir(parents=True)
        for src in [*bundles[extra.name].glob("*.py"), *extra.glob("*.py")]:
            shutil.copy(src, copy / src.name)
        bundles[extra.name] = copy
    return bundles


HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def airflow_server(kube_env):
    home = Path(tempfile.mkdtemp(prefix="skyshare-e2e-"))
    af = Airflow(home=home, port=free_port(), kubeconfig=kube_env, bundles=_bundles(home),
                 shape=SHAPE)
    started = time.monotonic()
    try:  # a start that fails half-way stops what it started (servers, components) too
        af.start()
        print(f"\nAirflow ({SHAPE.value} shape) healthy in {time.monotonic() - started:.0f}s")
        yield af
    finally:
        af.stop(purge=True)


@pytest.fixture(scope="session")
def admin_pods(admin):
    def pods(cluster: str, task_id: str):
        found = admin[cluster].list_pod_for_all_namespaces(  # every org's namespace
            label_selector=f"skyshare.dev/task-id={task_id}").items
        return [(p.metadata.name, p.status.phase) for p in found]

    return pods
