"""(b) Triggerer load: N pods followed at once for a window, skyshare vs KubernetesPodTrigger.

Each variant runs in its own process (clean CPU and RSS accounting) and follows N running
pods for the window; the apiserver's own apiserver_request_total says how many requests
it served meanwhile (minus an idle window of the same length measured in the same run).
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
import time
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


# seconds: imports, client set-up and the first list/get of every trigger (thousands of
# triggers may need longer: SKYSHARE_BENCH_WARMUP)
WARMUP = float(os.environ.get("SKYSHARE_BENCH_WARMUP", "15"))


def spread(n: int, clusters: list[str]) -> list[tuple[str, str]]:
    """N followed pods over the clusters, round robin: (cluster, pod name)."""
    k = len(clusters)
    return [(clusters[i % k], f"load-{i // k:04d}") for i in range(n)]


async def _follow(variant: str, pods: list[tuple[str, str]], kubeconfig: str,
                  window: float) -> dict:
    """Start N triggers, let them settle, then measure CPU over the window (steady state)."""
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
    await asyncio.sleep(WARMUP)
    before = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.sleep(window)
    after = resource.getrusage(resource.RUSAGE_SELF)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"cpu_seconds": cpu, "max_rss_mb": after.ru_maxrss / 1024, "fired_early": fired}


def child(variant: str, n: int, window: float, kubeconfig: str,
          clusters: list[str] | None = None) -> None:
    """Runs in the measured process."""
    os.environ.setdefault("AIRFLOW_CONN_KUBERNETES_DEFAULT", '{"conn_type": "kubernetes"}')
    pods = spread(n, clusters or [CLUSTER])
    print("RESULT " + json.dumps(asyncio.run(_follow(variant, pods, kubeconfig, window))))


def measure(variant: str, n: int, window: float, kubeconfig: str, api,
            clusters: list[str] | None = None) -> dict:
    """One variant in its own process; `api` one apiserver's client, or a list of them (the
    requests served are summed)."""
    apis = api if isinstance(api, list) else [api]
    start = sum(request_total(a) for a in apis)
    args = [sys.executable, "-m", "benchmarks.trigger_load", "--child", variant, "--n", str(n),
            "--window", str(window), "--kubeconfig", kubeconfig]
    if clusters:
        args += ["--clusters", ",".join(clusters)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=window + 600)
    served = sum(request_total(a) for a in apis) - start
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{variant} child failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return {"variant": variant, "n": n, "window_s": window, "requests_raw": served,
            **json.loads(line[len("RESULT "):])}


def run(ns: list[int], window: float, kubeconfig: str) -> dict:
    api = admin_api(kubeconfig, CLUSTER)
    rows = []
    for n in ns:
        make_pods(api, n)
        idle0 = request_total(api)
        time.sleep(window)  # the idle window: background traffic of the cluster's own parts
        idle = request_total(api) - idle0
        for variant in ("skyshare", "kubernetes_pod_trigger"):
            row = measure(variant, n, window, kubeconfig, api)
            row["requests"] = max(0.0, row["requests_raw"] - idle)
            row["idle_requests"] = idle
            rows.append(row)
            print(f"  N={n} {variant}: {row['requests']:.0f} requests, "
                  f"{row['cpu_seconds']:.1f} CPU s, {row['max_rss_mb']:.0f} MB RSS", flush=True)
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
