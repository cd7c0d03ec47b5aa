"""(c) Placement latency with 1, 2, 5, 10 clusters: parallel probe vs sequential baseline.

One placement = probe every cluster's nodes and pods + choose(). Measured warm (clients
reused, as in a running triggerer) for both variants, in the same run.
"""

from __future__ import annotations

import asyncio
import time

from benchmarks.common import summary

REPEATS = 30


def fleet_of(names: list[str], kubeconfig: str):
    from airflow_provider_skyshare.fleet import parse

    return parse({
        "orgs": [{"name": "rise", "members": ["*"]}, {"name": "other", "members": ["*"]}],
        "clusters": [{"name": n, "owner": "rise" if i == 0 else "other", "context": n,
                      "kubeconfig": kubeconfig, "gpu_products": {"T4": "Tesla-T4"}}
                     for i, n in enumerate(names)],
    }, source="bench")


async def _measure(fleet, sequential: bool) -> list[float]:
    from airflow_provider_skyshare import capacity, clients
    from airflow_provider_skyshare.placement import Request, choose

    request = Request("T4", 1, "rise", "x")
    probe = capacity.probe_sequential if sequential else capacity.probe
    await probe(fleet)  # warm the connection pools
    samples = []
    try:
        for _ in range(REPEATS):
            start = time.perf_counter()
            snapshot = await probe(fleet)
            decision = choose(request, fleet, snapshot, now=time.time())
            samples.append((time.perf_counter() - start) * 1000)
            assert decision.chosen is not None, decision.summary()
            bad = [c.cluster for c in snapshot.clusters.values() if not c.reachable]
            assert not bad, f"unreachable during the benchmark: {bad}"
    finally:
        await clients.close_async_clients()
    return samples


def run(all_clusters: list[str], sizes: list[int], kubeconfig: str) -> dict:
    rows = []
    for k in sizes:
        fleet = fleet_of(all_clusters[:k], kubeconfig)
        par = summary(asyncio.run(_measure(fleet, sequential=False)))
        seq = summary(asyncio.run(_measure(fleet, sequential=True)))
        rows.append({"clusters": k, "parallel_ms": par, "sequential_ms": seq})
        print(f"  {k:>2} clusters: parallel p50 {par['p50']:.1f} ms (p95 {par['p95']:.1f}), "
              f"sequential p50 {seq['p50']:.1f} ms", flush=True)
    return {"rows": rows, "repeats": REPEATS}
