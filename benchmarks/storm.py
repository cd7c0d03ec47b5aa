"""(g) Preemption storm: N borrowed pods preempted at once, all followed by one triggerer.

Two clusters of 8-GPU nodes: `sa` (bair's) and `sb` (rise's), each with GPUs for N 1-GPU
pods. sb is filled by rise's own pods, so N tasks of rise, started together in one process
(their MultiClusterPodTrigger in one event loop, as in one triggerer), land on sa as
borrowers. sb is then freed, and bair reclaims all of sa with one pod group (one Kueue
workload of N GPUs): Kueue evicts every borrowed pod in one preemption. Measured from the
benchmark's watches: per task, its pod on sa seen with TerminationTarget -> its replacement
ADDED on sb; and from the last eviction to the last replacement Running. The calm baseline is
the same with one task, in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from benchmarks.common import FirstSeen, summary
from scripts.scenario import ScenarioError, wait_for

SA, SB = "sa", "sb"
GPUS_PER_NODE = 8
RISE_NS, BAIR_NS = "skyshare-rise", "skyshare-bair"
TASK_KEY = "skyshare.dev/task-key"
DAG = "bench_storm"
SELECTOR = f"skyshare.dev/dag-id={DAG}"


def nodes_for(n: int) -> int:
    return max(1, math.ceil(n / GPUS_PER_NODE))


def group_pods(n_gpus: int, tag: str) -> list[dict[str, Any]]:
    """bair's owner work reclaiming `n_gpus` on sa as one Kueue pod group (one workload, so
    one preemption evicts every borrower at once)."""
    count = math.ceil(n_gpus / GPUS_PER_NODE)
    group = f"reclaim-{tag}"
    return [{"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": f"{group}-{i}", "namespace": BAIR_NS,
        "labels": {"kueue.x-k8s.io/queue-name": "skyshare-owner",
                   "kueue.x-k8s.io/priority-class": "high-priority",
                   "kueue.x-k8s.io/pod-group-name": group, "skyshare-bench": "owner"},
        "annotations": {"kueue.x-k8s.io/pod-group-total-count": str(count)}},
        "spec": {"restartPolicy": "Never", "priorityClassName": "high-priority",
                 "nodeSelector": {"nvidia.com/gpu.product": "Tesla-T4"},
                 "containers": [{"name": "base", "image": "busybox", "resources": {
                     "limits": {"nvidia.com/gpu": str(GPUS_PER_NODE)},
                     "requests": {"nvidia.com/gpu": str(GPUS_PER_NODE)}}}]}}
        for i in range(count)]


def filler_pods(n_gpus: int, tag: str) -> list[dict[str, Any]]:
    """rise's own pods filling sb, one per node."""
    out = []
    for i in range(math.ceil(n_gpus / GPUS_PER_NODE)):
        pod = group_pods(GPUS_PER_NODE, f"{tag}-{i}")[0]
        labels = {k: v for k, v in pod["metadata"]["labels"].items() if "pod-group" not in k}
        pod["metadata"] = {"name": f"filler-{tag}-{i}", "namespace": RISE_NS, "labels": labels}
        out.append(pod)
    return out


def latencies(evicted: dict[str, float], created: dict[str, float]) -> dict[str, float]:
    """Per task key: seconds from its pod's eviction to its replacement (created after it)."""
    return {k: created[k] - t for k, t in evicted.items() if k in created and created[k] >= t}


def outcome(evicted: dict[str, float], created: dict[str, float],
            running: dict[str, float], n: int) -> dict[str, Any]:
    """The storm in figures: per-task latency, the eviction spread, the time to all running."""
    lat = [s * 1000 for s in latencies(evicted, created).values()]
    last_evicted = max(evicted.values(), default=float("nan"))
    done = [t for k, t in running.items() if k in evicted and t >= evicted[k]]
    return {"tasks": n, "evicted": len(evicted), "replaced": len(lat),
            "running_again": len(done), "ms": summary(lat), "samples_ms": lat,
            "eviction_spread_s": last_evicted - min(evicted.values(), default=float("nan")),
            "all_running_after_last_eviction_s":
                max(done) - last_evicted if len(done) == n else None}


def terminating(pod: dict[str, Any]) -> bool:
    """Kueue's mark on a pod it preempts."""
    return any(c.get("type") == "TerminationTarget" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def task_key(pod: dict[str, Any]) -> str | None:
    return (pod["metadata"].get("labels") or {}).get(TASK_KEY)


# -- the run ---------------------------------------------------------------------------------
def _task_pods(core, ns: str) -> list[Any]:
    return core.list_namespaced_pod(ns, label_selector=SELECTOR).items


def _running_count(core, ns: str, selector: str) -> int:
    return sum(p.status.phase == "Running" and not p.metadata.deletion_timestamp
               for p in core.list_namespaced_pod(ns, label_selector=selector).items)


def _create_all(core, pods: list[dict[str, Any]]) -> None:
    for pod in pods:
        core.create_namespaced_pod(pod["metadata"]["namespace"], pod)


OURS = ((RISE_NS, SELECTOR), (RISE_NS, "skyshare-bench=owner"), (BAIR_NS, "skyshare-bench=owner"))


def _clean(cores: dict[str, Any]) -> None:
    """Every pod of the benchmark gone. Kueue keeps its finalizer on the failed members of the
    reclaiming pod group (it waits for replacements of a group's failed pods); as the admin
    that made them, the benchmark lets them go."""
    for core in cores.values():
        for ns, sel in OURS:
            core.delete_collection_namespaced_pod(ns, label_selector=sel, grace_period_seconds=0)

    def gone(core: Any) -> bool:
        left = [p for ns, sel in OURS for p in core.list_namespaced_pod(ns, label_selector=sel).items]
        for pod in left:
            if pod.metadata.deletion_timestamp and pod.metadata.finalizers:
                _release(core, pod.metadata.namespace, pod.metadata.name)
        return not left

    for name, core in cores.items():
        wait_for(lambda c=core: gone(c), 180, f"{name} cleaned")


def _release(core: Any, ns: str, name: str) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        core.patch_namespaced_pod(name, ns, {"metadata": {"finalizers": None}})
    except ApiException as exc:
        if exc.status != 404:
            raise


def _watches(api_clients: dict[str, Any], cores: dict[str, Any]) -> dict[str, FirstSeen]:
    from benchmarks.multikueue import running

    def to_dict(name: str):
        return lambda obj: api_clients[name].sanitize_for_serialization(obj)

    def watch(name: str, test) -> FirstSeen:
        return FirstSeen(cores[name].list_namespaced_pod, (RISE_NS,), test, to_dict(name),
                         SELECTOR, key=task_key)

    return {"evicted": watch(SA, terminating), "created": watch(SB, lambda _: True),
            "running": watch(SB, running)}


def storm(api_clients: dict[str, Any], n: int, capacity: int, fleet_file: str,
          kubeconfig: str, timeout: float, wait: bool) -> dict[str, Any]:
    """One storm of `n` tasks on clusters of `capacity` GPUs each; `wait`: the tasks'
    wait_for_termination (the default: a replacement only once the evicted pod is gone)."""
    cores = {k: _core(a) for k, a in api_clients.items()}
    tag = uuid.uuid4().hex[:6]
    _clean(cores)
    _create_all(cores[SB], filler_pods(capacity, tag))
    wait_for(lambda: _running_count(cores[SB], RISE_NS, "skyshare-bench=owner")
             >= nodes_for(capacity), 120, "sb full")
    proc = start_followers(n, fleet_file, kubeconfig, wait)
    try:
        wait_for(lambda: _running_count(cores[SA], RISE_NS, SELECTOR) >= n, timeout,
                 f"{n} tasks running on sa")
        cores[SB].delete_collection_namespaced_pod(RISE_NS, label_selector="skyshare-bench=owner",
                                                   grace_period_seconds=0)
        wait_for(lambda: not _running_count(cores[SB], RISE_NS, "skyshare-bench=owner"), 60,
                 "sb free")
        seen = _watches(api_clients, cores)
        _create_all(cores[SA], group_pods(capacity, tag))
        try:
            wait_for(lambda: len([k for k, t in seen["running"].at.items()
                                  if k in seen["evicted"].at]) >= n, timeout,
                     f"{n} tasks running again on sb")
        except ScenarioError as exc:
            print(f"  storm of {n}: {exc}", flush=True)
        for w in seen.values():
            w.stop()
        return {**outcome(seen["evicted"].at, seen["created"].at, seen["running"].at, n),
                "wait_for_termination": wait}
    finally:
        proc.terminate()
        proc.wait(30)
        _clean(cores)


def _core(api_client: Any) -> Any:
    from kubernetes import client

    return client.CoreV1Api(api_client)


def run(kubeconfig: str, sizes: list[int], fleet_file: str, timeout: float = 300) -> dict:
    from kubernetes import config

    api_clients = {n: config.new_client_from_config(config_file=kubeconfig, context=n)
                   for n in (SA, SB)}
    capacity = nodes_for(max(sizes)) * GPUS_PER_NODE
    rows = []
    for wait in (True, False):
        for n in sizes:
            row = storm(api_clients, n, capacity, fleet_file, kubeconfig, timeout, wait)
            rows.append(row)
            _print(row)
    return {"rows": rows, "gpus_per_cluster": capacity}


def _print(row: dict[str, Any]) -> None:
    ms, n = row["ms"], row["tasks"]
    print(f"  storm of {n} (wait_for_termination={row['wait_for_termination']}): eviction "
          f"spread {row['eviction_spread_s']:.2f} s; preemption "
              f"-> replacement p50 {ms['p50']:.0f} ms, p95 {ms['p95']:.0f}, max {ms['max']:.0f}"
          f" ({row['replaced']}/{n}); all running again "
          f"{row['all_running_after_last_eviction_s']} s after the last eviction", flush=True)


# -- the measured process: N triggers in one event loop --------------------------------------
def _trigger(i: int, template: dict[str, Any], fleet_file: str, run: str, wait: bool) -> Any:
    from airflow_provider_skyshare import fleetfile
    from airflow_provider_skyshare.follow import Follow, Job, Settings
    from airflow_provider_skyshare.placement import Request
    from airflow_provider_skyshare.pods import TaskIdentity
    from airflow_provider_skyshare.triggers.pod import MultiClusterPodTrigger

    job = Job(fleetfile.cached(fleet_file), Request("T4", 1, "rise"), template,
              TaskIdentity(DAG, "t", f"{run}-{i}"),  # a run's own pod and claim names
              Settings(max_preemptions=5, wait_for_termination=wait))
    # No live logs: the storm measures following and moving (each log stream would be one
    # more HTTP connection per pod through the sandbox's one KWOK per cluster).
    return MultiClusterPodTrigger(state=Follow(job).to_dict(), finish={"get_logs": False})


async def _follow_all(n: int, fleet_file: str, wait: bool) -> None:
    from benchmarks.worker import skyshare_operator

    template = skyshare_operator(fleet_file).build_template()
    run = f"storm-{uuid.uuid4().hex[:6]}"
    triggers = [_trigger(i, template, fleet_file, run, wait) for i in range(n)]

    async def drain(t: Any) -> None:
        async for event in t.run():  # a task that ended here (it should not) says how
            print(f"ENDED {t.state['identity']['run_id']}: {event.payload}", flush=True)
            return

    print(f"FOLLOWING {n}", flush=True)
    await asyncio.gather(*(drain(t) for t in triggers))


def start_followers(n: int, fleet_file: str, kubeconfig: str, wait: bool) -> subprocess.Popen:
    """The triggerer-like process; its log (a line per decision) beside the fleet file."""
    with open(Path(fleet_file).with_name(f"storm-{n}-wait-{wait}.log"), "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "benchmarks.storm", "--child", str(n), fleet_file,
             *([] if wait else ["--no-wait"])],
            stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[1],
            env={**os.environ, "AIRFLOW__SKYSHARE__FLEET_FILE": fleet_file,
                 "KUBECONFIG": kubeconfig})


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--child", type=int, required=True)
    p.add_argument("fleet_file")
    p.add_argument("--no-wait", action="store_true", help="wait_for_termination=False")
    a = p.parse_args()
    asyncio.run(_follow_all(a.child, a.fleet_file, not a.no_wait))
