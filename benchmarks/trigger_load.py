"""(b) Triggerer load: N pods followed at once for a window, skyshare vs KubernetesPodTrigger.

Each variant runs in its own process (clean CPU and RSS accounting) and follows N running
pods; once its CPU is steady it marks a window on stdout. The apiserver's own
apiserver_request_total, read at the marks, says how many requests it served in the window
(minus an idle window of the same length measured in the same run); skyshare's client also
counts its own requests, by verb and resource.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.common import admin_api, request_total

CLUSTER = "bench"
NS = "skyshare-load"  # no org's, and no queue-name label: these pods are not Kueue's
LABEL = "skyshare-bench=load"


def make_pods(api, n: int) -> list[str]:
    from kubernetes.client.exceptions import ApiException

    names = [f"load-{i:04d}" for i in range(n)]
    from benchmarks.multikueue import namespace

    for obj in namespace(NS):  # (a fleet may not use "default": it is the cluster's own)
        try:
            if obj["kind"] == "Namespace":
                api.create_namespace(obj)
            else:  # the sandbox runs no ServiceAccount controller
                api.create_namespaced_service_account(NS, obj)
        except ApiException as exc:
            if exc.status != 409:
                raise
    for name in names:
        body = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {
                "skyshare-bench": "load",
                "app.kubernetes.io/managed-by": "airflow-provider-skyshare"}},
            "spec": {"containers": [{"name": "base", "image": "busybox"}],
                     "restartPolicy": "Never"},
        }
        try:
            api.create_namespaced_pod(NS, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        pods = api.list_namespaced_pod(NS, label_selector=LABEL).items
        if sum(p.status.phase == "Running" for p in pods) >= n:
            return names
        time.sleep(1)
    raise RuntimeError("benchmark pods did not all reach Running")


def delete_pods(api) -> None:
    api.delete_collection_namespaced_pod(NS, label_selector=LABEL, grace_period_seconds=0)


def bench_fleet(kubeconfig: str, clusters: list[str], directory: str) -> str:
    """The fleet of the followed pods' clusters, in a file the triggerer is configured with
    (a deferred task names its fleet; the trigger reads it from there)."""
    import yaml

    path = Path(directory) / "fleet-load.yaml"
    path.write_text(yaml.safe_dump({
        "version": 1, "orgs": [{"name": "bench", "members": ["*"]}],
        "clusters": [{"name": c, "owner": "bench", "context": c, "kubeconfig": kubeconfig,
                      "namespace": NS, "gpu_products": {"T4": "Tesla-T4"}} for c in clusters]}))
    os.environ["AIRFLOW__SKYSHARE__FLEET_FILE"] = str(path)
    return str(path)


def _skyshare_trigger(name: str, fleet_file: str, cluster: str = CLUSTER):
    from airflow_provider_skyshare import fleetfile
    from airflow_provider_skyshare.follow import Follow, Job, Settings
    from airflow_provider_skyshare.placement import Request
    from airflow_provider_skyshare.pods import TaskIdentity
    from airflow_provider_skyshare.timeline import Attempt, Timeline
    from airflow_provider_skyshare.triggers.pod import MultiClusterPodTrigger

    job = Job(fleetfile.cached(fleet_file), Request("T4", 1, "bench", "x"),
              {"spec": {"containers": [{}]}}, TaskIdentity("bench", name, "run"), Settings())
    state = Follow(job, Timeline((Attempt(1, cluster, "owner", name, NS, time.time()),)))
    # No logs, as the KubernetesPodTrigger baseline (get_logs=False): with them on, each
    # running pod would add a log stream (an HTTP connection) that the baseline does not open.
    return MultiClusterPodTrigger(state=state.to_dict(), finish={"get_logs": False})


@functools.cache
def _config_of(kubeconfig: str, cluster: str) -> dict:
    """The kubeconfig a KubernetesPodOperator user of one cluster has (its context only):
    what KPO puts in each trigger's config_dict. Parsed once here, not once per trigger."""
    import yaml

    from benchmarks.db_cost import minified

    with open(kubeconfig) as fh:
        return minified(yaml.safe_load(fh), cluster)


def _kpt(name: str, kubeconfig: str, cluster: str = CLUSTER):
    from airflow.providers.cncf.kubernetes.triggers.pod import KubernetesPodTrigger

    return KubernetesPodTrigger(
        pod_name=name, pod_namespace=NS, trigger_start_time=datetime.now(timezone.utc),
        base_container_name="base", kubernetes_conn_id=None,
        config_dict=_config_of(kubeconfig, cluster), cluster_context=cluster, get_logs=False,
        startup_timeout=3600, schedule_timeout=3600,
    )


# The warm-up (imports, client set-up, the first list/get of every trigger) lasts until the
# process's CPU rate is steady: two 5 s slices within 25% (or 0.02 cores) of each other, after
# at least WARMUP s and at most WARMUP_MAX s. A fixed warm-up measured thousands of triggers
# still starting as if it were their steady state.
WARMUP = float(os.environ.get("SKYSHARE_BENCH_WARMUP", "15"))
WARMUP_MAX = 300.0
SLICE = 5.0
WINDOW_START, WINDOW_END = "WINDOW-START", "WINDOW-END"


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def steady(previous: float, last: float) -> bool:
    """Two successive CPU rates (cores) close enough to call the process settled."""
    return abs(last - previous) <= max(0.02, 0.25 * max(previous, last))


async def _settle(following: Callable[[], bool]) -> tuple[float, bool]:
    """Wait out the warm-up: how long it took, and whether the process settled (or
    WARMUP_MAX ran out first). Settled: `following` (every trigger has reached its steady
    state, where the variant can tell) and a CPU rate steady over two slices. A constant
    rate alone is not enough: thousands of triggers starting one after another burn CPU at a
    constant rate too."""
    start = time.monotonic()
    await asyncio.sleep(WARMUP)
    rates: list[float] = []
    while time.monotonic() - start < WARMUP_MAX:
        before = _cpu()
        await asyncio.sleep(SLICE)
        rates.append((_cpu() - before) / SLICE)
        settled = following()  # asked every slice: "since the last look" is one slice
        if len(rates) >= 2 and steady(rates[-2], rates[-1]) and settled:
            return time.monotonic() - start, True
    return time.monotonic() - start, False


def _skyshare_following(n: int) -> Callable[[], bool]:
    """Every trigger subscribed to its cluster's watch, and no request but watches since the
    last look (a starting trigger reads its pod once)."""
    from airflow_provider_skyshare import watch

    seen = [_client_requests()]

    def following() -> bool:
        now, before = _client_requests(), seen[0]
        seen[0] = now
        reads = sum(v - before.get(k, 0) for k, v in now.items() if not k.startswith("WATCH"))
        return watch.subscriptions() >= n and reads == 0

    return following


def _client_requests() -> dict[str, int]:
    """This process's own requests by verb and resource (skyshare's client counts them)."""
    from airflow_provider_skyshare import kube

    out: dict[str, int] = {}
    for (_, verb, res), n in kube.REQUESTS.items():
        out[f"{verb} {res}"] = out.get(f"{verb} {res}", 0) + n
    return out


def spread(n: int, clusters: list[str]) -> list[tuple[str, str]]:
    """N followed pods over the clusters, round robin: (cluster, pod name)."""
    k = len(clusters)
    return [(clusters[i % k], f"load-{i // k:04d}") for i in range(n)]


async def _follow(variant: str, pods: list[tuple[str, str]], kubeconfig: str,
                  window: float) -> dict:
    """Start N triggers, let them settle, then measure CPU over the window (steady state).
    The window's start and end are printed, for the parent to read the apiservers' counts."""
    if variant == "skyshare":
        fleet_file = bench_fleet(kubeconfig, sorted({c for c, _ in pods}), tempfile.mkdtemp())
        triggers = [_skyshare_trigger(name, fleet_file, cluster) for cluster, name in pods]
    else:
        triggers = [_kpt(name, kubeconfig, cluster) for cluster, name in pods]
    fired = 0

    async def drain(t) -> None:
        nonlocal fired
        async for _ in t.run():
            fired += 1

    tasks = [asyncio.create_task(drain(t)) for t in triggers]
    warmup, settled = await _settle(_skyshare_following(len(pods)) if variant == "skyshare"
                                    else lambda: True)
    client0 = _client_requests() if variant == "skyshare" else {}
    print(WINDOW_START, flush=True)
    before = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.sleep(window)
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(WINDOW_END, flush=True)
    client = {k: v - client0.get(k, 0) for k, v in _client_requests().items()
              if v - client0.get(k, 0)} if variant == "skyshare" else None
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"cpu_seconds": cpu, "max_rss_mb": after.ru_maxrss / 1024, "fired_early": fired,
            "warmup_s": round(warmup, 1), "settled": settled, "client_requests": client}


def child(variant: str, n: int, window: float, kubeconfig: str,
          clusters: list[str] | None = None) -> None:
    """Runs in the measured process."""
    os.environ.setdefault("AIRFLOW_CONN_KUBERNETES_DEFAULT", '{"conn_type": "kubernetes"}')
    pods = spread(n, clusters or [CLUSTER])
    print("RESULT " + json.dumps(asyncio.run(_follow(variant, pods, kubeconfig, window))),
          flush=True)


def served(apis: list) -> tuple[float, float]:
    """(all requests, pod requests) the apiservers have served so far, by their own count."""
    totals = [request_total(a) for a in apis]
    return sum(t for t, _ in totals), sum(p for _, p in totals)


def measure(variant: str, n: int, window: float, kubeconfig: str, api,
            clusters: list[str] | None = None) -> dict:
    """One variant in its own process; `api` one apiserver's client, or a list of them (the
    requests served between the child's window markers are summed)."""
    apis = api if isinstance(api, list) else [api]
    args = [sys.executable, "-m", "benchmarks.trigger_load", "--child", variant, "--n", str(n),
            "--window", str(window), "--kubeconfig", kubeconfig]
    if clusters:
        args += ["--clusters", ",".join(clusters)]
    marks: dict[str, tuple[float, float, float]] = {}
    out: list[str] = []
    limit = WARMUP_MAX + window + 600
    with tempfile.TemporaryFile("w+") as err, subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=err, text=True) as proc:
        overran = threading.Event()
        timer = threading.Timer(limit, lambda: (overran.set(), proc.kill()))  # a hung child
        timer.start()
        try:
            for line in proc.stdout:  # type: ignore[union-attr]
                out.append(line)
                if line.strip() in (WINDOW_START, WINDOW_END):
                    marks[line.strip()] = (time.monotonic(), *served(apis))
            proc.wait()
        finally:
            timer.cancel()
        err.seek(0)
        stderr = err.read()
    if overran.is_set():
        raise subprocess.TimeoutExpired(args, limit)
    line = next((x for x in out if x.startswith("RESULT ")), None)
    if line is None or len(marks) < 2:
        raise RuntimeError(f"{variant} child failed:\n{''.join(out)[-2000:]}\n{stderr[-3000:]}")
    (t0, all0, pods0), (t1, all1, pods1) = marks[WINDOW_START], marks[WINDOW_END]
    return {"variant": variant, "n": n, "window_s": window, "measured_s": round(t1 - t0, 1),
            "requests_raw": all1 - all0, "pod_requests_raw": pods1 - pods0,
            **json.loads(line[len("RESULT "):])}


def idle(apis: list, window: float) -> tuple[float, float]:
    """The apiservers' own background (nothing followed), per second: (all, on pods). Timed
    between the reads, as the measured windows are (reading 20 apiservers takes a while)."""
    t0 = time.monotonic()  # stamped before each read, as measure() stamps its marks
    all0, pods0 = served(apis)
    time.sleep(window)
    took = time.monotonic() - t0
    all1, pods1 = served(apis)
    return (all1 - all0) / took, (pods1 - pods0) / took


def net_of(row: dict, background: tuple[float, float]) -> dict:
    """A measured window's requests minus the background's over the same time."""
    seconds = row["measured_s"]
    return {**row, "requests": max(0.0, row["requests_raw"] - background[0] * seconds),
            "pod_requests": max(0.0, row["pod_requests_raw"] - background[1] * seconds),
            "idle_requests": background[0] * seconds,
            "idle_pod_requests": background[1] * seconds}


def run(ns: list[int], window: float, kubeconfig: str) -> dict:
    api = admin_api(kubeconfig, CLUSTER)
    rows = []
    for n in ns:
        make_pods(api, n)
        background = idle([api], window)
        for variant in ("skyshare", "kubernetes_pod_trigger"):
            row = net_of(measure(variant, n, window, kubeconfig, api), background)
            rows.append(row)
            print(f"  N={n} {variant}: {row['requests']:.0f} requests "
                  f"({row['pod_requests']:.0f} on pods), {row['cpu_seconds']:.1f} CPU s, "
                  f"{row['max_rss_mb']:.0f} MB RSS", flush=True)
        delete_pods(api)
    return {"rows": rows}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--child")
    p.add_argument("--n", type=int)
    p.add_argument("--window", type=float)
    p.add_argument("--kubeconfig")
    p.add_argument("--clusters", default="")
    a = p.parse_args()
    child(a.child, a.n, a.window, a.kubeconfig, [c for c in a.clusters.split(",") if c])
