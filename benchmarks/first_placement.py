"""(i) First placement: task start in the worker -> pod created, at 1, 10 and 20 clusters,
skyshare vs KubernetesPodOperator (which creates its pod on its one cluster).

Each sample is a fresh worker-like process (benchmarks.worker) calling execute() with the
fleet of the first k clusters; "task start" is execute() being called, "pod created" the
moment the benchmark's watch on that cluster's apiserver sees the pod ADDED. Both processes
read the same clock. The pods are deleted after each sample, so every placement finds the
same free GPUs.

A first placement asks the org's own clusters first and, where one takes the work now, no
other (placement.home_candidates). So a third variant measures the other case: rise's own
cluster full of its own work (one 2-GPU owner pod, kept for that variant's samples), where
the placement asks rise's cluster, then the whole fleet, and borrows.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from benchmarks import fleets, worker
from benchmarks.common import admin_api, summary
from benchmarks.preemption import Recorder, owner_pod
from scripts.scenario import wait_for

SELECTORS = ("skyshare.dev/dag-id=bench_first_skyshare", "dag_id=bench_first_kpo")


def cleanup(apis: dict[str, Any]) -> None:
    """Delete the samples' pods everywhere and wait until they are gone."""
    for api in apis.values():
        for sel in SELECTORS:
            api.delete_collection_namespaced_pod(worker.NS, label_selector=sel,
                                                 grace_period_seconds=0)
    for name, api in apis.items():
        wait_for(lambda a=api: not any(a.list_namespaced_pod(worker.NS, label_selector=s).items
                                       for s in SELECTORS), 60, f"sample pods gone on {name}")


def sample(variant: str, fleet_file: str, kubeconfig: str,
           recorders: dict[str, Recorder]) -> tuple[float, dict[str, Any]]:
    """One placement: milliseconds from execute() to the pod's ADDED event, and the child's
    report."""
    result = worker.run_child(variant, f"fp-{uuid.uuid4().hex[:8]}", fleet_file, kubeconfig)
    rec = recorders[result["cluster"]]
    seen = wait_for(lambda: rec.seen.get(result["pod"]), 30, f"{result['pod']} seen")
    return (seen - result["started_at"]) * 1000, result


VARIANTS = ("skyshare", "kpo")
HOME_FULL = "skyshare_home_full"  # the skyshare worker, with rise's own cluster full
FILLER = "fp-home-full"


def fill_home(api: Any, full: bool) -> None:
    """rise's cluster full of rise's own work (a 2-GPU owner pod running), or empty again."""
    if full:
        api.create_namespaced_pod(worker.NS, owner_pod(FILLER, None))
        wait_for(lambda: api.read_namespaced_pod(FILLER, worker.NS).status.phase == "Running",
                 60, "rise's cluster full")
        return
    api.delete_namespaced_pod(FILLER, worker.NS, grace_period_seconds=0)
    wait_for(lambda: not api.list_namespaced_pod(
        worker.NS, field_selector=f"metadata.name={FILLER}").items, 60, "the filler gone")


def run(kubeconfig: str, sizes: list[int], samples: int, directory: Path) -> dict[str, Any]:
    """Per fleet size, `samples` placements of each variant, interleaved (the machine's noise
    falls on both), after one discarded warm-up of each. KubernetesPodOperator's work does not
    depend on the fleet (its one cluster): its samples of every size are also pooled into one
    baseline."""
    names = fleets.cluster_names(max(sizes))
    apis = {n: admin_api(kubeconfig, n) for n in names}
    recorders = {n: Recorder(api, "", namespace=worker.NS) for n, api in apis.items()}
    rows, pooled = [], []
    try:
        cleanup(apis)
        warm = str(fleets.write(names, directory))
        for variant in VARIANTS:  # the page cache, the apiservers' first requests
            sample(variant, warm, kubeconfig, recorders)
            cleanup(apis)
        for k in sizes:
            fleet_file = str(fleets.write(names[:k], directory))
            got: dict[str, dict[str, list[float]]] = {
                v: {"ms": [], "defer": [], "cpu": []} for v in (*VARIANTS, HOME_FULL)}
            for _ in range(samples):
                for variant in VARIANTS:
                    latency, result = sample(variant, fleet_file, kubeconfig, recorders)
                    got[variant]["ms"].append(latency)
                    got[variant]["defer"].append(
                        (result["deferred_at"] - result["started_at"]) * 1000)
                    got[variant]["cpu"].append(result["cpu_ms_to_deferral"])
                    cleanup(apis)
            fill_home(apis["rise"], full=True)
            try:
                for _ in range(samples):
                    latency, result = sample("skyshare", fleet_file, kubeconfig, recorders)
                    got[HOME_FULL]["ms"].append(latency)
                    got[HOME_FULL]["defer"].append(
                        (result["deferred_at"] - result["started_at"]) * 1000)
                    got[HOME_FULL]["cpu"].append(result["cpu_ms_to_deferral"])
                    cleanup(apis)
            finally:
                fill_home(apis["rise"], full=False)
            row: dict[str, Any] = {"clusters": k, **{v: {
                "ms": summary(g["ms"]), "samples_ms": g["ms"],
                "to_deferral_ms": summary(g["defer"]),
                "cpu_ms_to_deferral": summary(g["cpu"])} for v, g in got.items()}}
            pooled += got["kpo"]["ms"]
            rows.append(row)
            print(f"  {k:>2} clusters: skyshare p50 {row['skyshare']['ms']['p50']:.0f} ms "
                  f"(p95 {row['skyshare']['ms']['p95']:.0f}, CPU "
                  f"{row['skyshare']['cpu_ms_to_deferral']['p50']:.0f} ms), "
                  f"KubernetesPodOperator p50 {row['kpo']['ms']['p50']:.0f} ms "
                  f"(p95 {row['kpo']['ms']['p95']:.0f}, CPU "
                  f"{row['kpo']['cpu_ms_to_deferral']['p50']:.0f} ms); rise's cluster full: "
                  f"skyshare p50 {row[HOME_FULL]['ms']['p50']:.0f} ms "
                  f"(p95 {row[HOME_FULL]['ms']['p95']:.0f})", flush=True)
    finally:
        for rec in recorders.values():
            rec.stop()
    return {"rows": rows, "samples": samples, "baseline": {"ms": summary(pooled),
                                                           "samples_ms": pooled}}
