"""The pure parts of the benchmarks (issue 18): the fleets they run on, how bytes of a
deferred task are counted, and the report rows. The measurements themselves need the
sandbox (`./dev bench`)."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from airflow_provider_skyshare.fleet import parse
from benchmarks import db_cost, fleets, report, worker


def test_fleet_of_n_clusters_is_the_seed_stretched():
    names = fleets.cluster_names(20)
    assert names[:3] == ["rise", "bair", "p3"] and names[-1] == "p20" and len(names) == 20
    fleet = parse(fleets.fleet_dict(names), source="test")
    assert list(fleet.clusters) == names
    assert {c.owner for n, c in fleet.clusters.items() if n != "rise"} == {"bair"}
    assert fleet.clusters["rise"].owner == "rise"
    # every cluster is reached as each org, as in the seed: rise@p7 is a sandbox context
    view = fleet.for_org("rise").clusters["p7"]
    assert (view.context, view.namespace) == ("rise@p7", "skyshare-rise")
    assert fleets.cluster_names(1) == ["rise"]


def test_fleet_files_round_trip(tmp_path):
    path = fleets.write(fleets.cluster_names(10), tmp_path)
    assert path.name == "fleet-10.yaml"
    assert len(yaml.safe_load(path.read_text())["clusters"]) == 10


KUBECONFIG = {
    "apiVersion": "v1", "kind": "Config", "current-context": "rise",
    "contexts": [{"name": n, "context": {"cluster": c, "user": u}}
                 for n, c, u in (("rise", "rise", "rise-admin"), ("rise@rise", "rise", "rise-o"),
                                 ("bair", "bair", "bair-admin"))],
    "clusters": [{"name": n, "cluster": {"server": f"https://{n}"}} for n in ("rise", "bair")],
    "users": [{"name": n, "user": {"token": n}} for n in ("rise-admin", "rise-o", "bair-admin")],
}


def test_the_baseline_kubeconfig_holds_only_its_one_context():
    mini = db_cost.minified(KUBECONFIG, "rise@rise")
    assert [c["name"] for c in mini["contexts"]] == ["rise@rise"]
    assert [c["name"] for c in mini["clusters"]] == ["rise"]
    assert [u["name"] for u in mini["users"]] == ["rise-o"]
    assert mini["current-context"] == "rise@rise"


def test_total_counts_every_stored_byte():
    row = {"trigger_kwargs": 1000, "next_kwargs": 2, "xcom": {"a": 10, "b": 20},
           "xcom_at_end": {"return_value": 300}}
    assert db_cost.total(row) == 1332
    assert db_cost.total({**row, "xcom_at_end": {}}) == 1032


def _deferred(fleet_file: str, monkeypatch):
    """A real TaskDeferred of the operator, as after a first placement on rise."""
    from airflow.sdk.exceptions import TaskDeferred

    from airflow_provider_skyshare.follow import Follow
    from airflow_provider_skyshare.timeline import Attempt, Timeline
    from airflow_provider_skyshare.triggers.pod import MultiClusterPodTrigger

    monkeypatch.setenv("AIRFLOW__SKYSHARE__FLEET_FILE", fleet_file)
    op = worker.skyshare_operator(fleet_file)
    ti = worker.TaskInstance("bench_first_skyshare", "first", "r1", bundle="rise")
    sup = op._supervisor(worker.context_of(ti))
    attempt = Attempt(1, "rise", "owner", "pod-1", worker.NS, time.time(), why="owner tier")
    state = Follow(sup.job, Timeline((attempt,))).to_dict()
    with pytest.raises(TaskDeferred) as err:
        op.defer(trigger=MultiClusterPodTrigger(state=state, finish={}),
                 method_name="execute_complete")
    return err.value, ti


def test_deferral_bytes_are_what_airflow_stores_and_grow_with_the_fleet(tmp_path,
                                                                      monkeypatch):
    seed, ti = _deferred(str(fleets.SEED), monkeypatch)
    stored = worker.deferral_bytes(seed, ti)
    _, kwargs = seed.trigger.serialize()
    from airflow.sdk.serde import serialize

    assert stored["trigger_kwargs"] == len(json.dumps(serialize(kwargs)).encode())
    assert stored["next_kwargs"] == len(b"{}")
    big, _ = _deferred(str(fleets.write(fleets.cluster_names(20), tmp_path)), monkeypatch)
    assert worker.deferral_bytes(big, ti)["trigger_kwargs"] > stored["trigger_kwargs"] + 2000
    # the end's XCom: the timeline with the attempt finished, longer than the placement's
    assert worker.final_timeline_bytes(kwargs) > worker.xcom_bytes(kwargs["state"]["timeline"])


def _summary(p50, p95, n=10):
    return {"n": n, "p50": p50, "p95": p95}


def test_report_rows_for_h_and_i():
    h = {"rows": [{"variant": "skyshare, seed", "fleet": "seed", "trigger_kwargs": 3000,
                   "total": 3600}],
         "baseline": [{"variant": "KubernetesPodTrigger, connection", "trigger_kwargs": 1500,
                       "total": 1600},
                      {"variant": "KubernetesPodTrigger, kubeconfig", "trigger_kwargs": 9000,
                       "total": 9100}]}
    (line,) = report.db_cost_lines(h)
    assert "3000 B (3600 B)" in line and "1500 B (1600 B)" in line and "| 2.0x |" in line
    assert "kubeconfig: 9000 B" in line
    i = {"rows": [{"clusters": 20, "skyshare": {"ms": _summary(100, 150)},
                   "kpo": {"ms": _summary(400, 500)}}]}
    (line,) = report.first_placement_lines(i)
    assert "20 clusters" in line and "100 / 150 ms" in line and "| 4.0x |" in line
    assert report.db_cost_lines(None) == [] and report.first_placement_lines(None) == []
