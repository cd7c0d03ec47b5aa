"""(f) Scale: N followed pods spread over K clusters in one triggerer, skyshare vs
KubernetesPodTrigger at the same N (or the largest N it survives).

(b)'s measurement (benchmarks.trigger_load: each variant in its own process, CPU and RSS from
getrusage over a window once its CPU is steady, requests from every apiserver's own
apiserver_request_total read at the window's marks, minus an idle window, and skyshare's own
client count) over a fleet: pods round robin on K clusters.
The baseline is run at each size in turn and stops at the first size it does not survive
(its process fails or overruns), which is reported with the reason.
"""

from __future__ import annotations

import concurrent.futures
import math
import subprocess
from typing import Any

from benchmarks import trigger_load
from benchmarks.common import admin_api

CLUSTERS = [f"f{i:02d}" for i in range(1, 21)]
NODES = 3  # 110 pods each: room for 250 pods per cluster (5,000 on 20)


def rates(row: dict[str, Any], idle: tuple[float, float]) -> dict[str, Any]:
    """Steady-state figures of one measured window: requests net of the background (`idle`:
    per second, all and on pods; the other resources' ~4,900/min would swamp skyshare's)."""
    row = trigger_load.net_of(row, idle)
    per_minute = 60 / row["measured_s"]
    return {**row, "requests_per_minute": row["requests"] * per_minute,
            "pod_requests_per_minute": row["pod_requests"] * per_minute,
            "cpu_cores": row["cpu_seconds"] / row["window_s"]}


def _measure(variant: str, n: int, window: float, kubeconfig: str, apis: list[Any],
             clusters: list[str], idle: tuple[float, float]) -> dict[str, Any]:
    try:
        row = trigger_load.measure(variant, n, window, kubeconfig, apis, clusters)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return {"variant": variant, "n": n, "broke": f"{type(exc).__name__}: {str(exc)[-600:]}"}
    return rates(row, idle)


def _pods(apis: dict[str, Any], per_cluster: int) -> None:
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda api: trigger_load.make_pods(api, per_cluster), apis.values()))


def run(kubeconfig: str, sizes: list[int], window: float, clusters: list[str]) -> dict:
    apis = {c: admin_api(kubeconfig, c) for c in clusters}
    everyone = list(apis.values())
    _pods(apis, math.ceil(max(sizes) / len(clusters)))
    idle = trigger_load.idle(everyone, window)  # the clusters' own background traffic
    rows, broke = [], None
    try:
        for n in sizes:
            variants = ["skyshare"] + ([] if broke else ["kubernetes_pod_trigger"])
            for variant in variants:
                row = _measure(variant, n, window, kubeconfig, everyone, clusters, idle)
                rows.append(row)
                if "broke" in row:
                    broke = row
                    print(f"  N={n} {variant}: broke ({row['broke'][:200]})", flush=True)
                    continue
                print(f"  N={n} on {len(clusters)} clusters, {variant}: "
                      f"{row['requests_per_minute']:.0f} requests/min "
                      f"({row['pod_requests_per_minute']:.0f} on pods), "
                      f"{row['cpu_cores']:.2f} cores, {row['max_rss_mb']:.0f} MB RSS", flush=True)
    finally:
        for api in everyone:
            trigger_load.delete_pods(api)
    return {"rows": rows, "clusters": len(clusters), "window_s": window,
            "baseline_broke_at": broke["n"] if broke else None}
