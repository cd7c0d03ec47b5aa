"""(e) The same eviction, MultiKueue vs skyshare: eviction on worker A -> the work running on B.

Sandbox: a MultiKueue manager `mk` (no GPU nodes) and two workers, `wa` (bair's) and `wb`
(rise's), each one node with 2 GPUs; all three run Kueue v0.19.2 with batch/Jobs. MultiKueue
dispatches a batch/Job (the unit it re-dispatches: a plain pod is not re-queued after an
eviction) through an AdmissionCheck `kueue.x-k8s.io/multikueue` whose MultiKueueConfig names
wa and wb, each reached through a kubeconfig Secret. On the workers the Job's LocalQueue `mk`
feeds wa's borrower ClusterQueue and wb's owner one, where skyshare places rise's work too.

Each round, for each system, the same 2-GPU work of rise: wb is kept full by a rise filler, so
the work lands on wa as a borrower; the filler goes (wb is free), then bair's owner pod arrives
on wa and wa's Kueue evicts the work. Measured from the benchmark's watches on the two worker
apiservers: the work's Workload on wa first seen with Evicted=True -> a pod of the work first
seen Running on wb. skyshare runs as in Airflow: the operator's execute() in a worker-like
process, then its trigger in that process (benchmarks.worker --follow).
"""

from __future__ import annotations

import base64
import math
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from benchmarks import db_cost, worker
from benchmarks.common import FirstSeen, summary
from scripts.scenario import ScenarioError, wait_for

MANAGER, WA, WB = "mk", "wa", "wb"
NS = "mk-bench"  # MultiKueue's namespace on all three (no tier policy there)
QUEUE = "mk"
KUEUE = "kueue.x-k8s.io/v1beta2"
CHECK, CONFIG = "mk-check", "mk-config"
WORKER_QUEUE = {WA: "skyshare-borrower", WB: "skyshare-owner"}  # as rise's tier on each
GPU = "nvidia.com/gpu"
RECOVERY_TIMEOUT = 240.0


# -- objects (pure) ------------------------------------------------------------------------
def namespace(name: str) -> list[dict[str, Any]]:
    return [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
            {"apiVersion": "v1", "kind": "ServiceAccount",
             "metadata": {"name": "default", "namespace": name}}]


def manager_objects(workers: list[str], gpus: int) -> list[dict[str, Any]]:
    """The manager's queue: quota for the work, the MultiKueue check over `workers`."""
    quota = {"cpu": 16, "memory": "64Gi", GPU: gpus, "pods": 20}
    return [*namespace(NS), *[
        {"apiVersion": KUEUE, "kind": "MultiKueueCluster", "metadata": {"name": w},
         "spec": {"clusterSource": {"kubeConfig": {"locationType": "Secret",
                                                   "location": f"{w}-kubeconfig"}}}}
        for w in workers],
        {"apiVersion": KUEUE, "kind": "MultiKueueConfig", "metadata": {"name": CONFIG},
         "spec": {"clusters": list(workers)}},
        {"apiVersion": KUEUE, "kind": "AdmissionCheck", "metadata": {"name": CHECK},
         "spec": {"controllerName": "kueue.x-k8s.io/multikueue",
                  "parameters": {"apiGroup": "kueue.x-k8s.io", "kind": "MultiKueueConfig",
                                 "name": CONFIG}}},
        {"apiVersion": KUEUE, "kind": "ClusterQueue", "metadata": {"name": "mk-manager"},
         "spec": {"namespaceSelector": {},
                  "admissionChecksStrategy": {"admissionChecks": [{"name": CHECK}]},
                  "resourceGroups": [{"coveredResources": list(quota), "flavors": [
                      {"name": "default-flavor", "resources": [
                          {"name": r, "nominalQuota": v} for r, v in quota.items()]}]}]}},
        {"apiVersion": KUEUE, "kind": "LocalQueue",
         "metadata": {"name": QUEUE, "namespace": NS}, "spec": {"clusterQueue": "mk-manager"}}]


def worker_objects(cluster_queue: str) -> list[dict[str, Any]]:
    """A worker mirrors the manager's namespace and LocalQueue (MultiKueue requires it)."""
    return [*namespace(NS), {"apiVersion": KUEUE, "kind": "LocalQueue",
                             "metadata": {"name": QUEUE, "namespace": NS},
                             "spec": {"clusterQueue": cluster_queue}}]


def kubeconfig_secret(worker_name: str, kubeconfig: dict[str, Any]) -> dict[str, Any]:
    """The worker's admin kubeconfig (certificates inline) where the manager's Kueue reads it."""
    doc = db_cost.minified(kubeconfig, worker_name)
    data = base64.b64encode(yaml.safe_dump(doc).encode()).decode()
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": f"{worker_name}-kubeconfig", "namespace": "kueue-system"},
            "data": {"kubeconfig": data}}


def gpu_container() -> dict[str, Any]:
    limits = {GPU: "2"}
    return {"name": "base", "image": "busybox", "resources": {"limits": limits,
                                                             "requests": limits}}


def job(name: str) -> dict[str, Any]:
    """rise's 2-GPU work as a batch/Job for MultiKueue (low priority: borrowed work)."""
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": NS, "labels": {
                "kueue.x-k8s.io/queue-name": QUEUE,
                "kueue.x-k8s.io/priority-class": "low-priority"}},
            "spec": {"parallelism": 1, "completions": 1, "suspend": True, "template": {
                "metadata": {"annotations": {"sandbox.skyshare.dev/duration": "600s"},
                             "labels": {"skyshare-bench": "mk"}},
                "spec": {"restartPolicy": "Never", "priorityClassName": "low-priority",
                         "nodeSelector": {"nvidia.com/gpu.product": "Tesla-T4"},
                         "containers": [gpu_container()]}}}}


def owner_pod(name: str, org: str) -> dict[str, Any]:
    """An owner-tier pod of `org` on its own cluster (a filler, or the preemptor)."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": f"skyshare-{org}", "labels": {
                "kueue.x-k8s.io/queue-name": "skyshare-owner",
                "kueue.x-k8s.io/priority-class": "high-priority", "skyshare-bench": "owner"}},
            "spec": {"restartPolicy": "Never", "priorityClassName": "high-priority",
                     "nodeSelector": {"nvidia.com/gpu.product": "Tesla-T4"},
                     "containers": [gpu_container()]}}


# -- what the watches saw (pure) -----------------------------------------------------------
def evicted(workload: dict[str, Any]) -> bool:
    return any(c.get("type") == "Evicted" and c.get("status") == "True"
               for c in (workload.get("status") or {}).get("conditions") or [])


def running(pod: dict[str, Any]) -> bool:
    return ((pod.get("status") or {}).get("phase") == "Running"
            and not pod["metadata"].get("deletionTimestamp"))


def recovery(evicted_at: dict[str, float], running_at: dict[str, float],
             since: float) -> float | None:
    """Seconds from the first eviction on A (seen after `since`: an older round's evicted
    Workload may still be listed) to the first pod running on B after it."""
    start = first_after(evicted_at, since)
    if start is None:
        return None
    end = first_after(running_at, start)
    return None if end is None else end - start


def first_after(seen_at: dict[str, float], since: float) -> float | None:
    later = [t for t in seen_at.values() if t >= since]
    return min(later) if later else None


def phases(evicted_at: float, created_at: float | None, running_at: float | None,
           ) -> dict[str, float | None]:
    """Where a round's time went: the system's own part (eviction on A -> its work created
    on B: the follower's move, or MultiKueue's re-dispatch) and B's (created -> running:
    B's Kueue admits it, the scheduler binds it, the kubelet starts it)."""
    def span(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else b - a

    return {"evicted_to_created_s": span(evicted_at, created_at),
            "created_to_running_s": span(created_at, running_at)}


# -- the run ---------------------------------------------------------------------------------
class Clusters:
    """Admin clients of the three clusters."""

    def __init__(self, kubeconfig: str) -> None:
        from kubernetes import client, config

        self.kubeconfig = kubeconfig
        self.raw = {n: config.new_client_from_config(config_file=kubeconfig, context=n)
                    for n in (MANAGER, WA, WB)}
        self.core = {n: client.CoreV1Api(a) for n, a in self.raw.items()}
        self.custom = {n: client.CustomObjectsApi(a) for n, a in self.raw.items()}
        self.batch = client.BatchV1Api(self.raw[MANAGER])

    def to_dict(self, name: str) -> Callable[[Any], dict]:
        api = self.raw[name]
        return lambda obj: obj if isinstance(obj, dict) else api.sanitize_for_serialization(obj)

    def workloads(self, name: str, ns: str) -> FirstSeen:
        return FirstSeen(self.custom[name].list_namespaced_custom_object,
                         ("kueue.x-k8s.io", "v1beta2", ns, "workloads"), evicted, dict)

    def pods(self, name: str, ns: str, selector: str) -> FirstSeen:
        return FirstSeen(self.core[name].list_namespaced_pod, (ns,), running,
                         self.to_dict(name), selector)

    def created(self, name: str, ns: str, selector: str, jobs: bool) -> FirstSeen:
        """When the work's object first appears on `name`: MultiKueue's remote Job (its pod
        comes after B's Kueue admits it), or skyshare's pod."""
        api = self.raw[name]
        if jobs:
            from kubernetes import client

            return FirstSeen(client.BatchV1Api(api).list_namespaced_job, (ns,),
                             lambda _o: True, self.to_dict(name))
        return FirstSeen(self.core[name].list_namespaced_pod, (ns,), lambda _o: True,
                         self.to_dict(name), selector)


def setup(c: Clusters) -> None:
    """MultiKueue on the manager, the mirrored namespace and queue on the workers; returns
    once both MultiKueueClusters are Active and the AdmissionCheck is."""
    from airflow_provider_skyshare.sandbox.cluster import _retrying, apply

    def put(name: str, obj: dict[str, Any]) -> None:  # a busy apiserver may drop a request
        _retrying(name, f"{obj['kind']} {obj['metadata']['name']}",
                  lambda: apply(c.raw[name], obj))

    kubeconfig = yaml.safe_load(Path(c.kubeconfig).read_text())
    for w in (WA, WB):
        for obj in worker_objects(WORKER_QUEUE[w]):
            put(w, obj)
        put(MANAGER, kubeconfig_secret(w, kubeconfig))
    for obj in manager_objects([WA, WB], gpus=4):
        put(MANAGER, obj)

    def active(plural: str, name: str) -> bool:
        obj = c.custom[MANAGER].get_cluster_custom_object("kueue.x-k8s.io", "v1beta2", plural,
                                                          name)
        return any(x["type"] == "Active" and x["status"] == "True"
                   for x in (obj.get("status") or {}).get("conditions") or [])

    for w in (WA, WB):
        wait_for(lambda w=w: active("multikueueclusters", w), 60, f"MultiKueueCluster {w} active")
    wait_for(lambda: active("admissionchecks", CHECK), 60, "the multikueue check active")


def _delete_pod(core, name: str, ns: str) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        core.delete_namespaced_pod(name, ns, grace_period_seconds=0)
    except ApiException as exc:
        if exc.status != 404:
            raise


def _running(core, ns: str, selector: str) -> list[str]:
    return [p.metadata.name for p in core.list_namespaced_pod(ns, label_selector=selector).items
            if p.status.phase == "Running" and not p.metadata.deletion_timestamp]


def _gone(core, ns: str, selector: str) -> bool:
    return not core.list_namespaced_pod(ns, label_selector=selector).items


class Round:
    """One eviction of one system's work: the filler, the preemptor, the watches."""

    def __init__(self, c: Clusters, work_ns: str, work_selector: str) -> None:
        self.c, self.ns, self.selector = c, work_ns, work_selector
        self.tag = uuid.uuid4().hex[:6]
        self.filler, self.preemptor = f"filler-{self.tag}", f"preemptor-{self.tag}"

    def fill_wb(self) -> None:
        self.c.core[WB].create_namespaced_pod("skyshare-rise", owner_pod(self.filler, "rise"))
        wait_for(lambda: self.filler in _running(self.c.core[WB], "skyshare-rise",
                                                 "skyshare-bench=owner"), 60, "filler on wb")

    def on_wa(self) -> str:
        return wait_for(lambda: _running(self.c.core[WA], self.ns, self.selector), 120,
                        "the work running on wa")[0]

    def evict(self, jobs: bool = False) -> tuple[FirstSeen, FirstSeen]:
        """wb freed, then the owner's pod on wa; watches started before either."""
        wls = self.c.workloads(WA, self.ns)
        pods = self.c.pods(WB, self.ns, self.selector)
        self.made = self.c.created(WB, self.ns, self.selector, jobs)
        _delete_pod(self.c.core[WB], self.filler, "skyshare-rise")
        wait_for(lambda: _gone(self.c.core[WB], "skyshare-rise", "skyshare-bench=owner"), 60,
                 "filler gone")
        self.since = time.time()
        self.c.core[WA].create_namespaced_pod("skyshare-bair", owner_pod(self.preemptor, "bair"))
        return wls, pods

    def measure(self, wls: FirstSeen, pods: FirstSeen) -> dict[str, Any]:
        """The round's seconds (None: not running again in time) and their phases."""
        try:
            seconds = wait_for(lambda: recovery(wls.at, pods.at, self.since), RECOVERY_TIMEOUT,
                               "the work running on wb")
        except ScenarioError:
            seconds = None
        finally:
            wls.stop()
            pods.stop()
            self.made.stop()
        out: dict[str, Any] = {"seconds": seconds}
        start = first_after(wls.at, self.since)
        if start is not None:
            out.update(phases(start, first_after(self.made.at, start),
                              first_after(pods.at, start)))
        return out

    def end(self) -> None:
        _delete_pod(self.c.core[WA], self.preemptor, "skyshare-bair")
        _delete_pod(self.c.core[WB], self.filler, "skyshare-rise")
        for w in (WA, WB):
            wait_for(lambda w=w: _gone(self.c.core[w], "skyshare-bair", "skyshare-bench=owner")
                     and _gone(self.c.core[w], "skyshare-rise", "skyshare-bench=owner"), 60,
                     f"fillers and preemptors gone on {w}")


def _pods_gone(c: Clusters, ns: str, selector: str) -> None:
    for w in (WA, WB):
        c.core[w].delete_collection_namespaced_pod(ns, label_selector=selector,
                                                   grace_period_seconds=0)
    for w in (WA, WB):
        wait_for(lambda w=w: _gone(c.core[w], ns, selector), 120, f"work pods gone on {w}")


def manager_status(c: Clusters) -> list[dict[str, Any]]:
    """The manager's Workloads as they are: conditions and admission checks (what MultiKueue
    did instead, when the work did not run again)."""
    items = c.custom[MANAGER].list_namespaced_custom_object("kueue.x-k8s.io", "v1beta2", NS,
                                                            "workloads")["items"]
    keep = ("type", "status", "reason", "message")
    return [{"name": w["metadata"]["name"],
             "conditions": [{k: x.get(k) for k in keep}
                            for x in (w.get("status") or {}).get("conditions") or []],
             "admissionChecks": (w.get("status") or {}).get("admissionChecks"),
             "clusterName": (w.get("status") or {}).get("clusterName")} for w in items]


def multikueue_round(c: Clusters) -> dict[str, Any]:
    r = Round(c, NS, "skyshare-bench=mk")
    name = f"mk-{r.tag}"
    r.fill_wb()
    c.batch.create_namespaced_job(NS, job(name))
    try:
        r.on_wa()
        wls, pods = r.evict(jobs=True)
        return {**r.measure(wls, pods), "manager": manager_status(c)}
    finally:
        c.batch.delete_namespaced_job(name, NS, propagation_policy="Background")
        r.end()
        _pods_gone(c, NS, "skyshare-bench=mk")


SKYSHARE_SELECTOR = "skyshare.dev/dag-id=bench_first_skyshare"


def skyshare_round(c: Clusters, fleet_file: str) -> dict[str, Any]:
    r = Round(c, "skyshare-rise", SKYSHARE_SELECTOR)
    r.fill_wb()
    log = Path(fleet_file).parent / f"mk-follower-{r.tag}.log"
    proc = worker.start_follower(f"mk-{r.tag}", fleet_file, c.kubeconfig, log)
    try:
        placed = worker.result_line(proc)
        if placed["cluster"] != WA:
            raise RuntimeError(f"placed on {placed['cluster']}, not on wa: wb was not full")
        r.on_wa()
        wls, pods = r.evict()
        return {**r.measure(wls, pods), "follower_log": str(log)}
    finally:
        proc.terminate()
        proc.wait(30)
        r.end()
        _pods_gone(c, "skyshare-rise", SKYSHARE_SELECTOR)


def run(kubeconfig: str, fleet_file: str, rounds: int) -> dict[str, Any]:
    c = Clusters(kubeconfig)
    setup(c)
    out: dict[str, Any] = {"rounds": rounds}
    for name, one in (("multikueue", lambda: multikueue_round(c)),
                      ("skyshare", lambda: skyshare_round(c, fleet_file))):
        results = []
        for i in range(1, rounds + 1):
            res = one()
            results.append(res)
            took = "did not run again" if res["seconds"] is None else f"{res['seconds']:.2f} s"
            split = ", ".join(f"{k[:-2].replace('_', ' ')} {v:.2f} s"
                              for k, v in res.items() if k.endswith("_s") and v is not None)
            print(f"  {name} round {i}/{rounds}: eviction on wa -> running on wb {took}"
                  f" ({split})", flush=True)
        ms = [r["seconds"] * 1000 for r in results if r["seconds"] is not None]
        out[name] = {"ms": summary(ms), "samples_ms": ms, "recovered": len(ms),
                     "rounds": results}
    mk, ours = out["multikueue"]["ms"]["p50"], out["skyshare"]["ms"]["p50"]
    out["ratio_p50"] = None if math.isnan(mk) or math.isnan(ours) or not ours else mk / ours
    return out
