"""One table and PNG plots from benchmarks/results/*.json."""

from __future__ import annotations

import json
from pathlib import Path


def _load(results: Path, name: str) -> dict | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def write(results: Path) -> str:
    lines = ["| figure | skyshare | baseline | ratio | goal |", "|---|---|---|---|---|"]
    a = _load(results, "preemption")
    if a:
        ours, base = a["bench_skyshare"]["ms"], a["bench_kpo"]["ms"]
        lines.append(f"| (a) preemption -> replacement p50 / p95 | {ours['p50']:.0f} / "
                     f"{ours['p95']:.0f} ms (n={ours['n']}) | {base['p50']:.0f} / {base['p95']:.0f}"
                     f" ms (KPO+retries, n={base['n']}) | {a['ratio_p50']:.0f}x | p50 <= 1 s, >= 20x |")
        nowait = a.get("bench_skyshare_nowait")
        if nowait:
            lines.append(f"| (a) the same with wait_for_termination=False p50 / p95 | "
                         f"{nowait['ms']['p50']:.0f} / {nowait['ms']['p95']:.0f} ms | "
                         f"waiting (default): {ours['p50']:.0f} ms | "
                         f"+{a['wait_cost_p50_ms']:.0f} ms for the wait | - |")
        oc, bc = a["bench_skyshare"].get("cold_ms"), a["bench_kpo"].get("cold_ms")
        if oc is not None and bc is not None:
            lines.append(f"| (a) the same, first preemption in a fresh triggerer | {oc:.0f} ms | "
                         f"{bc:.0f} ms (KPO+retries) | {bc / max(oc, 1):.0f}x | - |")
    b = _load(results, "trigger_load")
    if b:
        by = {(r["variant"], r["n"]): r for r in b["rows"]}
        for n in sorted({r["n"] for r in b["rows"]}):
            s, k = by[("skyshare", n)], by[("kubernetes_pod_trigger", n)]
            req = k["requests"] / max(s["requests"], 1)
            cpu = k["cpu_seconds"] / max(s["cpu_seconds"], 1e-3)
            lines.append(f"| (b) N={n}, {s['window_s']:.0f} s: requests / CPU s / RSS MB | "
                         f"{s['requests']:.0f} / {s['cpu_seconds']:.1f} / {s['max_rss_mb']:.0f} | "
                         f"{k['requests']:.0f} / {k['cpu_seconds']:.1f} / {k['max_rss_mb']:.0f} "
                         f"(KubernetesPodTrigger) | {req:.0f}x requests, {cpu:.1f}x CPU | "
                         ">= 10x fewer requests, <= 1/5 CPU |")
    c = _load(results, "placement_latency")
    if c:
        for r in c["rows"]:
            par, seq = r["parallel_ms"], r["sequential_ms"]
            lines.append(f"| (c) placement, {r['clusters']} clusters p50 | {par['p50']:.1f} ms | "
                         f"{seq['p50']:.1f} ms (sequential) | {seq['p50'] / par['p50']:.1f}x | "
                         "<= 150 ms at 10 |")
    d = _load(results, "scenario")
    if d:
        lines.append(f"| (d) romil/abbeel scenario wall time | {d['scenario_wall_s']:.1f} s | - | - "
                     "| <= 90 s |")
        lines.append(f"| (d) abbeel submitted -> romil-train running again | "
                     f"{d['abbeel_submitted_to_romil_train_running_s']:.1f} s | - | - | - |")
    table = "\n".join(lines)
    (results / "results.md").write_text("# Benchmark results\n\n" + table + "\n")
    _plots(results, a, c)
    return table


def _plots(results: Path, a: dict | None, c: dict | None) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    if c:
        ks = [r["clusters"] for r in c["rows"]]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(ks, [r["parallel_ms"]["p50"] for r in c["rows"]], "o-", label="skyshare (parallel)")
        ax.plot(ks, [r["sequential_ms"]["p50"] for r in c["rows"]], "s--", label="sequential")
        ax.set_xlabel("clusters")
        ax.set_ylabel("placement p50 (ms)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(results / "placement_latency.png", dpi=120)
    if a:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.boxplot([a["bench_skyshare"]["samples_ms"], a["bench_kpo"]["samples_ms"]])
        ax.set_xticks([1, 2], ["skyshare", "KPO + retries"])
        ax.set_yscale("log")
        ax.set_ylabel("preemption -> replacement (ms)")
        fig.tight_layout()
        fig.savefig(results / "preemption.png", dpi=120)
