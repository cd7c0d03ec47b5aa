"""The example bundles parse, and no example DAG says whose work it is (its bundle does)."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_provider_skyshare.operators import MultiClusterGpuOperator

DAGS = Path(__file__).resolve().parents[2] / "dags"
BUNDLES = sorted(d for d in DAGS.iterdir() if d.is_dir() and any(d.glob("*.py")))


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda d: d.name)
def test_each_bundle_parses_and_says_no_org(bundle, monkeypatch) -> None:
    from airflow.dag_processing.dagbag import DagBag

    fleets = ",".join(str(DAGS / n) for n in ("fleet.yaml", "fleet-teams.yaml", "fleet-gangs.yaml"))
    monkeypatch.setenv("AIRFLOW__SKYSHARE__FLEET_FILE", fleets)
    bag = DagBag(dag_folder=str(bundle), bundle_name=bundle.name)
    assert not bag.import_errors, bag.import_errors
    ops = [t for dag in bag.dags.values() for t in dag.tasks
           if isinstance(t, MultiClusterGpuOperator)]
    assert ops, f"no skyshare task in bundle {bundle.name}"
    assert all(op.org is None and op.user is None for op in ops)


def test_the_bundles_are_the_fleets_orgs() -> None:
    from airflow_provider_skyshare.fleetfile import load

    mapped = {b for name in ("fleet.yaml", "fleet-teams.yaml")
              for org in load(DAGS / name).orgs.values() for b in org.bundles}
    assert mapped == {d.name for d in BUNDLES}
