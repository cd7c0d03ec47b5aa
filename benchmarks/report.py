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
    e, f, g, h, i = (_load(results, n) for n in ("multikueue", "scale", "storm", "db_cost",
                                                 "first_placement"))
    lines += (multikueue_lines(e) + scale_lines(f) + storm_lines(g) + db_cost_lines(h)
              + first_placement_lines(i))
    table = "\n".join(lines)
    (results / "results.md").write_text("# Benchmark results\n\n" + table + "\n")
    _plots(results, a, c)
    _plots_h_i(results, h, i)
    _plot_e(results, e)
    _plot_g(results, g)
    _plot_f(results, f)
    return table


def _per_minute(row: dict) -> str:
    """Requests per minute net of the idle window; and those on pods, where measured (the
    only resource both triggers read: the clusters' own background is on the others)."""
    text = f"{row['requests_per_minute']:.0f} req/min"
    if "pod_requests_per_minute" in row:
        text += f" ({row['pod_requests_per_minute']:.0f} on pods)"
    return text


def scale_lines(f: dict | None) -> list[str]:
    """(f): one triggerer at N pods over the fleet, against KubernetesPodTrigger at the same N
    (or where it broke)."""
    if not f:
        return []
    by = {(r["variant"], r["n"]): r for r in f["rows"]}
    out = []
    for n in sorted({r["n"] for r in f["rows"]}):
        s, k = by.get(("skyshare", n)), by.get(("kubernetes_pod_trigger", n))
        if s is None or "broke" in s:
            out.append(f"| (f) N={n} on {f['clusters']} clusters | broke | - | - | - |")
            continue
        ours = f"{s['cpu_cores']:.2f} cores / {s['max_rss_mb']:.0f} MB / {_per_minute(s)}"
        if k is None:
            base, ratio = "not run (broke at a smaller N)", "-"
        elif "broke" in k:
            base, ratio = f"broke: {k['broke'][:80]}", "-"
        else:
            base = (f"{k['cpu_cores']:.2f} cores / {k['max_rss_mb']:.0f} MB / "
                    f"{_per_minute(k)} (KubernetesPodTrigger)")
            key = "pod_requests" if "pod_requests" in s and "pod_requests" in k else "requests"
            ratio = (f"{k[key] / max(s[key], 1):.0f}x fewer "
                     f"{'pod ' if key == 'pod_requests' else ''}requests")
        out.append(f"| (f) N={n} on {f['clusters']} clusters: CPU / RSS / requests | {ours} | "
                   f"{base} | {ratio} | <= 1 core, <= 1 GB, >= 20x fewer |")
    return out


def _plot_f(results: Path, f: dict | None) -> None:
    plt = _pyplot()
    if plt is None or not f:
        return
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for variant, style in (("skyshare", "o-"), ("kubernetes_pod_trigger", "s--")):
        rows = sorted((r for r in f["rows"] if r["variant"] == variant and "broke" not in r),
                      key=lambda r: r["n"])
        ax.plot([r["n"] for r in rows], [r["requests_per_minute"] for r in rows], style,
                label=variant)
    ax.set_xlabel(f"followed pods on {f['clusters']} clusters")
    ax.set_ylabel("apiserver requests / minute")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(results / "scale.png", dpi=120)


def storm_lines(g: dict | None) -> list[str]:
    """(g): each storm against the calm baseline (one task, the same waiting mode)."""
    if not g:
        return []
    out = []
    for wait in sorted({r.get("wait_for_termination", True) for r in g["rows"]}, reverse=True):
        rows = [r for r in g["rows"] if r.get("wait_for_termination", True) is wait]
        calm = min(rows, key=lambda r: r["tasks"])
        mode = ("waiting for each evicted pod to be gone (default)" if wait else
                "wait_for_termination=False")
        for r in rows:
            if r is calm:
                continue
            ms, again = r["ms"], r["all_running_after_last_eviction_s"]
            again_text = (f"all {r['tasks']} running {again:.1f} s after the last eviction"
                          if again is not None else
                          f"{r['running_again']}/{r['tasks']} running again by the deadline")
            out.append(f"| (g) storm, {mode}: {r['tasks']} preempted within "
                       f"{r['eviction_spread_s']:.2f} s, preemption -> replacement p50 / p95 / "
                       f"max; {again_text} | {ms['p50']:.0f} / {ms['p95']:.0f} / "
                       f"{ms['max']:.0f} ms ({r['replaced']}/{r['tasks']}) | "
                       f"{calm['ms']['p50']:.0f} ms (one task, calm) | "
                       f"{ms['p50'] / max(calm['ms']['p50'], 1):.1f}x the calm p50 | "
                       "p95 <= 1 s, all within 10 s |")
    return out


def _plot_g(results: Path, g: dict | None) -> None:
    plt = _pyplot()
    if plt is None or not g:
        return
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for r in g["rows"]:
        wait = "" if r.get("wait_for_termination", True) else ", no wait"
        ax.hist(r["samples_ms"], bins=30, alpha=0.6, label=f"{r['tasks']} task(s){wait}")
    ax.set_xlabel("preemption -> replacement created (ms)")
    ax.set_ylabel("tasks")
    ax.legend()
    fig.tight_layout()
    fig.savefig(results / "storm.png", dpi=120)


def multikueue_lines(e: dict | None) -> list[str]:
    """(e): eviction on worker A -> running on worker B, MultiKueue against skyshare. With a
    handful of rounds a p50 would be a mean in disguise: every round is shown, in order."""
    if not e:
        return []
    ours, mk = e["skyshare"], e["multikueue"]

    def cell(side: dict) -> str:
        rounds = side["rounds"]
        if not side["recovered"]:
            return f"did not run again in any of {len(rounds)} rounds"
        each = ", ".join("-" if r["seconds"] is None else f"{r['seconds']:.2f}" for r in rounds)
        own = [r["evicted_to_created_s"] for r in rounds
               if r.get("evicted_to_created_s") is not None]
        split = (f"; eviction -> created {', '.join(f'{x:.2f}' for x in own)} s"
                 if own else "")
        return f"{each} s ({side['recovered']}/{len(rounds)} rounds{split})"

    ratio = f"{e['ratio_p50']:.1f}x" if e.get("ratio_p50") else "-"
    return [f"| (e) eviction on one cluster -> running on another, each round | {cell(ours)} | "
            f"{cell(mk)} (MultiKueue, batch/Job) | {ratio} (medians) | >= 5x faster |"]


def _plot_e(results: Path, e: dict | None) -> None:
    plt = _pyplot()
    if plt is None or not e:
        return
    fig, ax = plt.subplots(figsize=(5, 3.5))
    data = [[ms / 1000 for ms in e[k]["samples_ms"]] or [float("nan")]
            for k in ("skyshare", "multikueue")]
    ax.boxplot(data)
    ax.set_xticks([1, 2], ["skyshare", "MultiKueue"])
    ax.set_ylabel("eviction on A -> running on B (s)")
    fig.tight_layout()
    fig.savefig(results / "multikueue.png", dpi=120)


def db_cost_lines(h: dict | None) -> list[str]:
    """(h): bytes the deferred task keeps in the DB, against KubernetesPodTrigger's."""
    if not h:
        return []
    base = min(h["baseline"], key=lambda r: r["trigger_kwargs"])
    others = "; ".join(f"{r['variant'].split(', ', 1)[1]}: {r['trigger_kwargs']} B"
                       for r in h["baseline"] if r is not base)
    return [f"| (h) trigger row bytes per deferred task, {r['fleet']} (all DB bytes incl. "
            f"XCom) | {r['trigger_kwargs']} B ({r['total']} B) | {base['trigger_kwargs']} B "
            f"({base['total']} B), KubernetesPodTrigger by {base['variant'].split(', ', 1)[1]}"
            f" ({others}) | {r['trigger_kwargs'] / base['trigger_kwargs']:.1f}x | <= 2x |"
            for r in h["rows"]]


def first_placement_lines(i: dict | None) -> list[str]:
    """(i): execute() in the worker -> pod ADDED, against KubernetesPodOperator's (its samples
    of every size pooled, where the run has them: it works on one cluster whatever the fleet)."""
    if not i:
        return []
    out = []
    for r in i["rows"]:
        ours = r["skyshare"]["ms"]
        base = (i.get("baseline") or r["kpo"])["ms"]
        cpu = r["skyshare"].get("cpu_ms_to_deferral")
        used = f", CPU {cpu['p50']:.0f} ms" if cpu else ""
        out.append(f"| (i) first placement, task start -> pod created, {r['clusters']} "
                   f"clusters p50 / p95 | {ours['p50']:.0f} / {ours['p95']:.0f} ms "
                   f"(n={ours['n']}{used}) | {base['p50']:.0f} / {base['p95']:.0f} ms "
                   f"(KubernetesPodOperator, one cluster, n={base['n']}) | "
                   f"{base['p50'] / ours['p50']:.1f}x | p50 <= 200 ms at 20 |")
        full = r.get("skyshare_home_full")
        if full:
            ms = full["ms"]
            out.append(f"| (i) the same, the org's own cluster full (asks it, then every "
                       f"cluster; borrows), {r['clusters']} clusters p50 / p95 | "
                       f"{ms['p50']:.0f} / {ms['p95']:.0f} ms (n={ms['n']}, CPU "
                       f"{full['cpu_ms_to_deferral']['p50']:.0f} ms) | {base['p50']:.0f} / "
                       f"{base['p95']:.0f} ms | {base['p50'] / ms['p50']:.1f}x | - |")
    return out


def _plots_h_i(results: Path, h: dict | None, i: dict | None) -> None:
    plt = _pyplot()
    if plt is None:
        return
    if h:
        rows = h["rows"] + h["baseline"]
        fig, ax = plt.subplots(figsize=(6.5, 3.5))
        ax.barh([r["variant"] for r in rows], [r["trigger_kwargs"] for r in rows],
                label="trigger row")
        ax.barh([r["variant"] for r in rows], [r["total"] - r["trigger_kwargs"] for r in rows],
                left=[r["trigger_kwargs"] for r in rows], label="next_kwargs + XCom")
        ax.set_xlabel("bytes per deferred task")
        ax.legend()
        fig.tight_layout()
        fig.savefig(results / "db_cost.png", dpi=120)
    if i:
        ks = [r["clusters"] for r in i["rows"]]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for key, label, style in (("skyshare", "skyshare", "o-"),
                                  ("kpo", "KubernetesPodOperator", "s--")):
            ax.plot(ks, [r[key]["ms"]["p50"] for r in i["rows"]], style, label=f"{label} p50")
            ax.plot(ks, [r[key]["ms"]["p95"] for r in i["rows"]], style, alpha=0.4,
                    label=f"{label} p95")
        ax.set_xlabel("clusters in the fleet")
        ax.set_ylabel("task start -> pod created (ms)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(results / "first_placement.png", dpi=120)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


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
