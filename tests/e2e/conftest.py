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

from airflow_provider_skyshare.sandbox import connections
from scripts.scenario import Airflow, Shape
from scripts.services import free_port

SHAPE = Shape(os.environ.get("SKYSHARE_E2E_SHAPE", Shape.PRODUCTION.value))
ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
# Clusters reached through connections only. The seed's fleet is the Variable's, and in no
# file Airflow is given: the seed scenario runs on it only if fleet_variable works.
SEED_FLEET = HERE / "fleets" / "fleet.yaml"
TEAMS_FLEET = HERE / "fleets" / "fleet-teams.yaml"
GANGS_FLEET = HERE / "fleets" / "fleet-gangs.yaml"
FLEET_VARIABLE = "skyshare_fleet"


def _bundles(home: Path) -> dict[str, Path]:
    """The example bundles copied under home/bundles, each with the test DAGs of
    tests/e2e/bundles/<bundle> added (bair: DAGs that claim rise's identity or reach for its
    connections; both: deferrable=False twins of the seed DAGs), next to
    tests/e2e/fleets/fleet-teams.yaml (the team DAGs name ../fleet-teams.yaml)."""
    root = home / "bundles"
    bundles = {}
    for folder in sorted((ROOT / "dags").iterdir()):
        if folder.is_dir() and any(folder.glob("*.py")):
            copy = bundles[folder.name] = root / folder.name
            copy.mkdir(parents=True)
            extra = HERE / "bundles" / folder.name
            for src in [*folder.glob("*.py"), *extra.glob("*.py")]:
                shutil.copy(src, copy / src.name)
    for fleet in (TEAMS_FLEET, GANGS_FLEET):  # the platform's other fleets (dags_folder's)
        shutil.copy(fleet, root / fleet.name)
    return bundles


@pytest.fixture(scope="session")
def airflow_server(sandbox, kube_env):
    """Connections only (issue 16): every cluster through a `kubernetes` connection of
    `skyshare-sandbox connections` (each org's scoped to its team), KUBECONFIG pointing
    nowhere, and the default fleet in an Airflow Variable ([skyshare] fleet_variable) held by
    the environment secrets backend."""
    home = Path(tempfile.mkdtemp(prefix="skyshare-e2e-"))
    bundles = _bundles(home)
    conns = connections.build([str(SEED_FLEET)], multi_team=True)
    af = Airflow(home=home, port=free_port(), bundles=bundles, shape=SHAPE,
                 dags_folder=home / "bundles", connections=conns, extra_env={
                     "AIRFLOW__SKYSHARE__FLEET_VARIABLE": FLEET_VARIABLE,
                     f"AIRFLOW_VAR_{FLEET_VARIABLE.upper()}": SEED_FLEET.read_text(),
                 })
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
