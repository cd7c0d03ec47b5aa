"""(a) Preemption -> replacement pod created, skyshare vs KubernetesPodOperator + retries.

Both run through the same real Airflow (scheduler, triggerer, API server). Each round:
rise is kept full by an owner's pod, the job lands on bair as a borrower, an owner's pod
arrives on bair and Kueue preempts the job. Times come from the benchmark's own watches:
from the moment the evicted pod carries Kueue's TerminationTarget condition to the moment
the replacement pod is ADDED (skyshare: its next attempt; KPO: its retry's pod).
"""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.common import admin_api, summary
from scripts.scenario import Airflow, wait_for

NS = "skyshare-rise"  # the job is rise's: its namespace on every cluster
OWNER_NS = {"rise": "skyshare-rise", "bair": "skyshare-bair"}  # each owner's, at home
GPU_POD = {
    "apiVersion": "v1", "kind": "Pod",
    "spec": {"containers": [{"name": "base", "image": "busybox",
                             "resources": {"limits": {"nvidia.com/gpu": "2"},
                                           "requests": {"nvidia.com/gpu": "2"}}}],
             "restartPolicy": "Never", "priorityClassName": "high-priority",
             "nodeSelector": {"nvidia.com/gpu.product": "Tesla-T4"}},
}


def owner_pod(name: str, duration: str | None) -> dict[str, Any]:
    pod = {**GPU_POD, "metadata": {"name": name, "labels": {
        "kueue.x-k8s.io/queue-name": "skyshare-owner",
        "kueue.x-k8s.io/priority-class": "high-priority", "skyshare-bench": "owner"}}}
    if duration:
        pod["metadata"]["annotations"] = {"sandbox.skyshare.dev/duration": duration}
    return pod


class Recorder:
    """Watches pods of one cluster and remembers when each thing was first seen."""

    def __init__(self, api, selector: str, namespace: str = NS) -> None:
        self.api, self.selector, self.namespace = api, selector, namespace
        self.seen: dict[str, float] = {}
        self.evicted: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        rv = None  # resume where the last stream ended: a gap could miss a short condition
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                for ev in w.stream(self.api.list_namespaced_pod, self.namespace, label_selector=self.selector,
                                   timeout_seconds=5, resource_version=rv,
                                   allow_watch_bookmarks=True):
                    now = time.time()
                    pod = ev["object"]
                    if ev["type"] == "BOOKMARK":  # a plain dict, only the resourceVersion
                        rv = ev["raw_object"]["metadata"]["resourceVersion"]
                        continue
                    rv = pod.metadata.resource_version
                    self.seen.setdefault(pod.metadata.name, now)
                    for c in pod.status.conditions or []:
                        if c.type == "TerminationTarget" and c.status == "True":
                            self.evicted.setdefault(pod.metadata.name, now)
                    if self._stop.is_set():
                        w.stop()
            except ApiException as exc:
                if exc.status != 410:
                    raise
                rv = None  # expired: list again

    def stop(self) -> None:
        self._stop.set()


def _delete(api, name: str, ns: str = NS) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        api.delete_namespaced_pod(name, ns, grace_period_seconds=0)
    except ApiException as exc:
        if exc.status != 404:
            raise


def _create(api, body: dict, ns: str = NS) -> None:
    _delete(api, body["metadata"]["name"], ns)
    wait_for(lambda: not api.list_namespaced_pod(
        ns, field_selector=f"metadata.name={body['metadata']['name']}").items, 30, "old pod gone")
    api.create_namespaced_pod(ns, body)


def round_trip(af: Airflow, dag_id: str, rise, bair, rec_rise: Recorder, rec_bair: Recorder,
               i: int) -> float:
    # Fresh names each run: Kueue names Workloads after pods, and a finished Workload of an
    # earlier same-named pod would hold a new one until the garbage collector removes it.
    i = f"{i}-{uuid.uuid4().hex[:6]}"
    _create(rise, owner_pod(f"filler-{i}", None))
    wait_for(lambda: any(p.status.phase == "Running" for p in rise.list_namespaced_pod(
        NS, label_selector="skyshare-bench=owner").items), 60, "filler running on rise")
    run = af.trigger(dag_id)
    first = wait_for(lambda: [p.metadata.name for p in bair.list_namespaced_pod(
        NS, label_selector=_job_selector(dag_id)).items if p.status.phase == "Running"], 120,
        f"{dag_id} running on bair")[0]
    # Preempt once the trigger follows the pod (as in real use), not in the second between
    # deferral and the triggerer picking the trigger up.
    wait_for(lambda: _trigger_started(af, dag_id, run), 60, f"{dag_id} trigger running")
    _create(bair, owner_pod(f"preemptor-{i}", "1s"), OWNER_NS["bair"])
    evicted = wait_for(lambda: rec_bair.evicted.get(first), 60, "eviction seen")
    rec = rec_bair if dag_id == "bench_kpo" else rec_rise

    def replacement() -> float | None:
        times = [t for name, t in rec.seen.items() if name != first and t > evicted
                 and name.startswith(("bench-", "kpo-bench"))]
        return min(times) if times else None

    created = wait_for(replacement, 180, f"{dag_id} replacement pod")
    # Measured. End the run at once (the replacement would otherwise wait for the filler and
    # then run its full duration): mark the task success, and clean up whatever is left.
    af.patch_task(dag_id, run, "bench", "success")
    wait_for(lambda: af.run_state(dag_id, run) in ("success", "failed"), 120, f"{dag_id} done",
             interval=0.5)
    for api in (rise, bair):
        for pod in api.list_namespaced_pod(NS, label_selector=_job_selector(dag_id)).items:
            _delete(api, pod.metadata.name)
    _delete(rise, f"filler-{i}")
    _delete(bair, f"preemptor-{i}")
    return created - evicted


def _trigger_started(af: Airflow, dag_id: str, run: str) -> bool:
    return any("starting" in p.read_text(errors="replace")
               for p in (af.home / "logs" / f"dag_id={dag_id}").rglob("*.trigger.*.log")
               if run in str(p))


def _job_selector(dag_id: str) -> str:
    if dag_id == "bench_kpo":
        return "skyshare-bench=kpo"
    return f"skyshare.dev/task-id=bench,skyshare.dev/dag-id={dag_id}"


def run(kubeconfig: str, rounds: int, baseline_rounds: int) -> dict:
    rise, bair = admin_api(kubeconfig, "rise"), admin_api(kubeconfig, "bair")
    # A fresh Airflow home each run: a deferred task left in an old one would resume and
    # keep placing pods on the clusters under measurement.
    dags = Path(__file__).resolve().parent / "dags"  # rise's bundle: the job is rise's
    af = Airflow(home=Path(tempfile.mkdtemp(prefix="skyshare-bench-a-")), port=28181,
                 bundles={"rise": dags}, kubeconfig=kubeconfig, extra_env={
                     "AIRFLOW__SKYSHARE__FLEET_FILE": str(dags.parents[1] / "dags" / "fleet.yaml")})
    af.start()
    for dag_id in ("bench_skyshare", "bench_skyshare_nowait", "bench_kpo"):
        wait_for(lambda d=dag_id: af.dag_ready(d), 120, f"{dag_id} parsed")
        af.unpause(dag_id)
    # Leftovers of an interrupted earlier run would keep rise or bair full.
    for api in (rise, bair):
        for sel in ("skyshare.dev/task-id=bench", "skyshare-bench=kpo", "skyshare-bench=owner"):
            for pod in api.list_pod_for_all_namespaces(label_selector=sel).items:
                _delete(api, pod.metadata.name, pod.metadata.namespace)
    rec_rise = Recorder(rise, "")
    rec_bair = Recorder(bair, "")
    out: dict[str, Any] = {}
    try:
        for dag_id, n in (("bench_skyshare", rounds), ("bench_skyshare_nowait", rounds),
                          ("bench_kpo", baseline_rounds)):
            # Round 0 is the first trigger of its kind in this triggerer: it pays the one-off
            # imports and connections. Reported on its own, not mixed into the percentiles.
            cold = round_trip(af, dag_id, rise, bair, rec_rise, rec_bair, 0) * 1000
            print(f"  {dag_id} cold round (first in this triggerer): {cold:.0f} ms", flush=True)
            samples = []
            for i in range(1, n + 1):
                s = round_trip(af, dag_id, rise, bair, rec_rise, rec_bair, i)
                samples.append(s * 1000)
                print(f"  {dag_id} round {i}/{n}: {s * 1000:.0f} ms", flush=True)
            out[dag_id] = {"ms": summary(samples), "samples_ms": samples, "cold_ms": cold}
    finally:
        rec_rise.stop()
        rec_bair.stop()
        af.stop()
    ours, base = out["bench_skyshare"]["ms"]["p50"], out["bench_kpo"]["ms"]["p50"]
    out["ratio_p50"] = base / ours if ours else float("inf")
    # what wait_for_termination (the default) costs per move: here KWOK ends a deleted pod at
    # once; on a real node the wait is the container's own stopping time
    out["wait_cost_p50_ms"] = ours - out["bench_skyshare_nowait"]["ms"]["p50"]
    return out
