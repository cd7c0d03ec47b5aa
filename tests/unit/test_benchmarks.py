"""The pure parts of the benchmarks (issue 18): the fleets they run on, how bytes of a
deferred task are counted, and the report rows. The measurements themselves need the
sandbox (`./dev bench`)."""

from __future__ import annotations

import json

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
    attempt = Attempt(1, "rise", "owner", "pod-1", worker.NS, 1_765_000_000.25, why="owner tier")
    state = Follow(sup.job, Timeline((attempt,))).to_dict()
    with pytest.raises(TaskDeferred) as err:
        op.defer(trigger=MultiClusterPodTrigger(state=state, finish={}),
                 method_name="execute_complete")
    return err.value, ti


def test_deferral_bytes_are_what_airflow_stores_and_do_not_grow_with_the_fleet(tmp_path,
                                                                             monkeypatch):
    seed, ti = _deferred(str(fleets.SEED), monkeypatch)
    stored = worker.deferral_bytes(seed, ti)
    _, kwargs = seed.trigger.serialize()
    from airflow.sdk.serde import serialize

    assert stored["trigger_kwargs"] == len(json.dumps(serialize(kwargs)).encode())
    assert stored["next_kwargs"] == len(b"{}")
    big_file = str(fleets.write(fleets.cluster_names(20), tmp_path))
    big, _ = _deferred(big_file, monkeypatch)
    # the row names its fleet (the file's path): 20 clusters cost no more than 2
    path_longer = len(big_file) - len(str(fleets.SEED))
    assert worker.deferral_bytes(big, ti)["trigger_kwargs"] == stored["trigger_kwargs"] + path_longer
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
    # the pooled baseline wins over the size's own samples, and the CPU is shown
    i["baseline"] = {"ms": _summary(300, 600, n=30)}
    i["rows"][0]["skyshare"]["cpu_ms_to_deferral"] = _summary(80, 90)
    (line,) = report.first_placement_lines(i)
    assert "(n=10, CPU 80 ms)" in line and "300 / 600 ms (KubernetesPodOperator, one cluster, " in line
    assert "n=30) | 3.0x |" in line
    assert report.db_cost_lines(None) == [] and report.first_placement_lines(None) == []


# -- (e) MultiKueue ------------------------------------------------------------------------
def test_manager_dispatches_through_one_multikueue_check_over_both_workers():
    from benchmarks import multikueue as mk

    objs = {(o["kind"], o["metadata"]["name"]): o for o in mk.manager_objects(["wa", "wb"], 4)}
    check = objs[("AdmissionCheck", mk.CHECK)]["spec"]
    assert check["controllerName"] == "kueue.x-k8s.io/multikueue"
    assert check["parameters"]["name"] == mk.CONFIG
    assert objs[("MultiKueueConfig", mk.CONFIG)]["spec"]["clusters"] == ["wa", "wb"]
    source = objs[("MultiKueueCluster", "wb")]["spec"]["clusterSource"]["kubeConfig"]
    assert source == {"locationType": "Secret", "location": "wb-kubeconfig"}
    cq = objs[("ClusterQueue", "mk-manager")]["spec"]
    assert cq["admissionChecksStrategy"]["admissionChecks"] == [{"name": mk.CHECK}]
    gpus = [r for r in cq["resourceGroups"][0]["flavors"][0]["resources"]
            if r["name"] == mk.GPU]
    assert gpus == [{"name": mk.GPU, "nominalQuota": 4}]
    assert objs[("LocalQueue", mk.QUEUE)]["metadata"]["namespace"] == mk.NS
    # the workers mirror the namespace and queue name, each onto its own ClusterQueue
    lq = [o for o in mk.worker_objects("skyshare-owner") if o["kind"] == "LocalQueue"]
    assert [(o["metadata"]["name"], o["spec"]["clusterQueue"]) for o in lq] == [
        (mk.QUEUE, "skyshare-owner")]


def test_the_kubeconfig_secret_holds_only_the_worker():
    import base64

    from benchmarks import multikueue as mk

    secret = mk.kubeconfig_secret("bair", KUBECONFIG)
    assert secret["metadata"] == {"name": "bair-kubeconfig", "namespace": "kueue-system"}
    doc = yaml.safe_load(base64.b64decode(secret["data"]["kubeconfig"]))
    assert [c["name"] for c in doc["clusters"]] == ["bair"]
    assert doc["current-context"] == "bair"


def test_the_job_is_borrowed_gpu_work_for_the_multikueue_queue():
    from benchmarks import multikueue as mk

    j = mk.job("mk-1")
    assert j["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == mk.QUEUE
    assert j["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "low-priority"
    (container,) = j["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["requests"] == {mk.GPU: "2"}
    assert j["spec"]["suspend"] is True


def _wl(*conditions):
    return {"metadata": {"name": "w"}, "status": {"conditions": [
        {"type": t, "status": s} for t, s in conditions]}}


def test_evicted_and_running_read_the_api_objects():
    from benchmarks import multikueue as mk

    assert mk.evicted(_wl(("QuotaReserved", "True"), ("Evicted", "True")))
    assert not mk.evicted(_wl(("Evicted", "False")))
    assert not mk.evicted({"metadata": {"name": "w"}})
    pod = {"metadata": {"name": "p"}, "status": {"phase": "Running"}}
    assert mk.running(pod)
    assert not mk.running({**pod, "metadata": {"name": "p", "deletionTimestamp": "x"}})
    assert not mk.running({**pod, "status": {"phase": "Pending"}})


def test_recovery_is_from_this_rounds_eviction_to_the_next_pod_running():
    from benchmarks import multikueue as mk

    assert mk.recovery({"old": 5.0, "w": 100.0}, {"p": 102.5}, since=50.0) == 2.5
    assert mk.recovery({"w": 100.0}, {"before": 99.0}, since=50.0) is None
    assert mk.recovery({"old": 5.0}, {"p": 102.5}, since=50.0) is None
    assert mk.recovery({"w": 100.0}, {"a": 104.0, "b": 101.0}, since=50.0) == 1.0


def test_report_row_for_e_shows_every_round_and_when_the_work_did_not_run_again():
    summary = {"n": 2, "p50": 800.0, "p95": 800.0, "max": 900.0}
    e = {"skyshare": {"ms": summary, "recovered": 2, "rounds": [
        {"seconds": 0.8, "evicted_to_created_s": 0.2}, {"seconds": None}, {"seconds": 0.9}]},
         "multikueue": {"ms": {}, "recovered": 0, "rounds": [{"seconds": None}] * 2},
         "ratio_p50": None}
    (line,) = report.multikueue_lines(e)
    assert "0.80, -, 0.90 s (2/3 rounds; eviction -> created 0.20 s)" in line
    assert "did not run again in any of 2 rounds" in line and "| - (medians) |" in line


def test_a_rounds_time_splits_at_the_works_creation_on_b():
    from benchmarks import multikueue as mk

    assert mk.phases(100.0, 100.25, 101.0) == {"evicted_to_created_s": 0.25,
                                               "created_to_running_s": 0.75}
    assert mk.phases(100.0, None, None) == {"evicted_to_created_s": None,
                                            "created_to_running_s": None}
    assert mk.first_after({"old": 5.0, "a": 103.0, "b": 101.0}, 50.0) == 101.0


# -- the sandbox's batch/Job clusters (MultiKueue) --------------------------------------------
def test_a_cluster_spec_may_run_jobs():
    from airflow_provider_skyshare.sandbox.cluster import ClusterSpec, SandboxError

    spec = ClusterSpec.parse("mk:nodes=0,gpus=0,jobs=1")
    assert (spec.nodes, spec.gpus, spec.jobs) == (0, 0, 1)
    assert ClusterSpec.parse("rise").jobs == 0
    with pytest.raises(SandboxError, match="jobs=0"):
        ClusterSpec.parse("rise:job=1")


def test_kueue_manages_jobs_only_where_asked(tmp_path):
    from airflow_provider_skyshare.sandbox import manifests

    ports = {"kueue_health": 1, "webhook": 2}
    assert manifests.kueue_config(ports, tmp_path)["integrations"]["frameworks"] == ["pod"]
    assert manifests.kueue_config(ports, tmp_path, jobs=True)["integrations"][
        "frameworks"] == ["pod", "batch/job"]
    hooks = [{"name": n, "clientConfig": {"service": {"path": p}}} for n, p in (
        ("pod", "/mutate--v1-pod"), ("job", "/mutate-batch-v1-job"),
        ("jobset", "/mutate-jobset-x-k8s-io-v1alpha2-jobset"),
        ("cq", "/mutate-kueue-x-k8s-io-v1beta2-clusterqueue"))]
    (tmp_path / "webhooks.yaml").write_text(yaml.safe_dump(
        {"kind": "MutatingWebhookConfiguration", "metadata": {"name": "m"}, "webhooks": hooks}))

    def kept(jobs):
        (doc,) = manifests.webhooks(tmp_path, 9443, "ca", jobs=jobs)
        return [h["name"] for h in doc["webhooks"]]

    assert kept(False) == ["pod", "cq"]
    assert kept(True) == ["pod", "job", "cq"]


# -- (g) storm -------------------------------------------------------------------------------
def test_one_pod_group_reclaims_the_whole_cluster():
    from benchmarks import storm

    pods = storm.group_pods(200, "t")
    assert len(pods) == 25 == storm.nodes_for(200)
    groups = {p["metadata"]["labels"]["kueue.x-k8s.io/pod-group-name"] for p in pods}
    assert groups == {"reclaim-t"}
    assert {p["metadata"]["annotations"]["kueue.x-k8s.io/pod-group-total-count"]
            for p in pods} == {"25"}
    assert sum(int(p["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"])
               for p in pods) == 200
    fillers = storm.filler_pods(200, "t")
    assert len(fillers) == 25 and {p["metadata"]["namespace"] for p in fillers} == {
        storm.RISE_NS}
    assert not any("pod-group" in k for p in fillers for k in p["metadata"]["labels"])
    assert len({p["metadata"]["name"] for p in fillers}) == 25
    assert storm.nodes_for(1) == 1 and storm.nodes_for(9) == 2


def test_storm_outcome_per_task_and_until_all_run_again():
    from benchmarks import storm

    evicted = {"a": 10.0, "b": 10.4, "c": 10.8}
    created = {"a": 10.5, "b": 11.4, "c": 10.7}  # c's "replacement" predates its eviction
    running = {"a": 12.0, "b": 13.0, "c": 12.5}
    out = storm.outcome(evicted, created, running, n=3)
    assert sorted(round(x) for x in out["samples_ms"]) == [500, 1000]
    assert out["replaced"] == 2 and out["running_again"] == 3
    assert out["eviction_spread_s"] == pytest.approx(0.8)
    assert out["all_running_after_last_eviction_s"] == pytest.approx(13.0 - 10.8)
    partial = storm.outcome(evicted, created, {"a": 12.0}, n=3)
    assert partial["all_running_after_last_eviction_s"] is None
    assert partial["running_again"] == 1


def test_storm_reads_kueues_mark_and_the_task_key():
    from benchmarks import storm

    pod = {"metadata": {"name": "p", "labels": {storm.TASK_KEY: "k1"}},
           "status": {"conditions": [{"type": "TerminationTarget", "status": "True"}]}}
    assert storm.terminating(pod) and storm.task_key(pod) == "k1"
    assert not storm.terminating({"metadata": {"name": "p"}, "status": {}})
    assert storm.task_key({"metadata": {"name": "p"}}) is None


def test_report_row_for_g_compares_with_the_calm_one():
    def row(n, p50, again):
        return {"tasks": n, "ms": {"p50": p50, "p95": p50 * 2, "max": p50 * 3},
                "replaced": n, "running_again": n, "eviction_spread_s": 0.5,
                "all_running_after_last_eviction_s": again}

    (line,) = report.storm_lines({"rows": [row(1, 100.0, 0.3), row(200, 400.0, 7.5)]})
    assert "200 preempted within 0.50 s" in line and "400 / 800 / 1200 ms" in line
    assert "all 200 running 7.5 s after" in line and "100 ms (one task" in line
    assert "4.0x the calm p50" in line and "(default)" in line
    # each waiting mode against its own calm storm
    fast = [{**row(1, 50.0, 0.2), "wait_for_termination": False},
            {**row(200, 100.0, 2.0), "wait_for_termination": False}]
    waiting, no_wait = report.storm_lines({"rows": [row(1, 100.0, 0.3), row(200, 400.0, 7.5),
                                                    *fast]})
    assert "(default)" in waiting and "wait_for_termination=False" in no_wait
    assert "50 ms (one task, calm) | 2.0x the calm p50" in no_wait


# -- (f) scale -------------------------------------------------------------------------------
def test_pods_are_spread_round_robin_with_names_each_cluster_has():
    from benchmarks import trigger_load

    pods = trigger_load.spread(5, ["a", "b"])
    assert pods == [("a", "load-0000"), ("b", "load-0000"), ("a", "load-0001"),
                    ("b", "load-0001"), ("a", "load-0002")]
    assert len(set(trigger_load.spread(5000, [f"c{i}" for i in range(20)]))) == 5000


def test_scale_rates_are_net_of_the_idle_window():
    from benchmarks import scale

    idle = (100.0 / 30, 2.0 / 30)  # per second
    row = scale.rates({"variant": "x", "n": 10, "window_s": 30.0, "measured_s": 30.0,
                       "requests_raw": 130.0, "pod_requests_raw": 12.0,
                       "cpu_seconds": 15.0, "max_rss_mb": 100}, idle)
    assert row["requests"] == pytest.approx(30.0) and row["requests_per_minute"] == \
        pytest.approx(60.0)
    assert row["pod_requests"] == pytest.approx(10.0)
    assert row["pod_requests_per_minute"] == pytest.approx(20.0)
    assert row["cpu_cores"] == 0.5
    assert scale.rates({**row, "requests_raw": 50.0}, idle)["requests"] == 0.0
    # over the time between the apiserver reads at the child's marks, background included
    longer = scale.rates({**row, "measured_s": 60.0, "requests_raw": 260.0}, idle)
    assert longer["requests"] == pytest.approx(60.0)
    assert longer["requests_per_minute"] == pytest.approx(60.0)


def test_the_warm_up_ends_when_the_cpu_rate_is_steady():
    from benchmarks import trigger_load

    assert trigger_load.steady(0.50, 0.45) and trigger_load.steady(0.001, 0.015)
    assert not trigger_load.steady(1.0, 0.3)  # thousands of triggers still starting
    assert not trigger_load.steady(0.0, 0.05)


def test_report_rows_for_f_say_where_the_baseline_broke():
    ok = {"cpu_cores": 0.1, "max_rss_mb": 200, "requests_per_minute": 60, "requests": 60}
    f = {"clusters": 20, "rows": [
        {"variant": "skyshare", "n": 1000, **ok},
        {"variant": "kubernetes_pod_trigger", "n": 1000, **ok, "requests": 6000,
         "cpu_cores": 1.5, "requests_per_minute": 6000},
        {"variant": "skyshare", "n": 5000, **ok},
        {"variant": "kubernetes_pod_trigger", "n": 5000, "broke": "TimeoutExpired: ..."}]}
    first, second = report.scale_lines(f)
    assert "100x fewer requests" in first and "1.50 cores" in first
    assert "broke: TimeoutExpired" in second and "0.10 cores / 200 MB / 60 req/min" in second
    pods = {"pod_requests": 5, "pod_requests_per_minute": 5}
    f["rows"][:2] = [{**f["rows"][0], **pods},
                     {**f["rows"][1], "pod_requests": 4000, "pod_requests_per_minute": 4000}]
    first, _ = report.scale_lines(f)
    assert "800x fewer pod requests" in first and "60 req/min (5 on pods)" in first
