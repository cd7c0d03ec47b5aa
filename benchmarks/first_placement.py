"""(i) First placement: task start in the worker -> pod created, at 1, 10 and 20 clusters,
skyshare vs KubernetesPodOperator (which creates its pod on its one cluster).

Each sample is a fresh worker-like process (benchmarks.worker) calling execute() with the
fleet of the first k clusters; "task start" is execute() being called, "pod created" the
moment the benchmark's watch on that cluster's apiserver sees the pod ADDED. Both processes
read the same clock. The pods are deleted after each sample, so every placement finds the
same free GPUs.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from benchmarks import fleets, worker
from benchmarks.common import admin_api, summary
from benchmarks.preemption import Recorder
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


def run(kubeconfig: str, sizes: list[int], samples: int, directory: Path) -> dict[str, Any]:
    names = fleets.cluster_names(max(sizes))
    apis = {n: admin_api(kubeconfig, n) for n in names}
    recorders = {n: Recorder(api, "", namespace=worker.NS) for n, api in apis.items()}
    rows = []
    try:
        cleanup(apis)
        for k in sizes:
            fleet_file = str(fleets.write(names[:k], directory))
            row: dict[str, Any] = {"clusters": k}
            for variant in ("skyshare", "kpo"):
                ms, defer_ms = [], []
                for _ in range(samples):
                    latency, result = sample(variant, fleet_file, kubeconfig, recorders)
                    ms.append(latency)
                    defer_ms.append((result["deferred_at"] - result["started_at"]) * 1000)
                    cleanup(apis)
                row[variant] = {"ms": summary(ms), "samples_ms": ms,
                                "to_deferral_ms": summary(defer_ms)}
            rows.append(row)
            print(f"  {k:>2} clusters: skyshare p50 {row['skyshare']['ms']['p50']:.0f} ms "
                  f"(p95 {row['skyshare']['ms']['p95']:.0f}), KubernetesPodOperator p50 "
                  f"{row['kpo']['ms']['p50']:.0f} ms (p95 {row['kpo']['ms']['p95']:.0f})",
                  flush=True)
    finally:
        for rec in recorders.values():
            rec.stop()
    return {"rows": rows, "samples": samples}
