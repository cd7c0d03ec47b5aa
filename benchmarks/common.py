"""Shared pieces of the benchmarks: sandbox access, apiserver metrics, stats, results."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def sandbox_up(*specs: str, fleet: Path | None = None) -> str:
    """Make sure the named sandbox clusters run (hosting the orgs of `fleet`, if given);
    returns the kubeconfig path."""
    args = [sys.executable, "-m", "airflow_provider_skyshare.sandbox.cli", "up"]
    for spec in specs:
        args += ["--cluster", spec]
    if fleet is not None:
        args += ["--fleet", str(fleet)]
    subprocess.run(args, check=True)
    out = subprocess.run([sys.executable, "-m", "airflow_provider_skyshare.sandbox.cli",
                          "kubeconfig"], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def bench_dir() -> Path:
    """Files the sandbox refers to while it runs (fleet files): beside its state."""
    from airflow_provider_skyshare.sandbox import paths

    return paths.state_dir().parent / (paths.state_dir().name + "-bench")


def admin_api(kubeconfig: str, context: str):
    from kubernetes import client, config

    return client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig,
                                                          context=context))


def request_total(api) -> tuple[float, float]:
    """apiserver_request_total on this apiserver (its own count of served requests): all of
    them, and those on pods (the only resource either benchmarked trigger reads)."""
    resp = api.api_client.call_api("/metrics", "GET", _preload_content=False,
                                   _return_http_data_only=True, auth_settings=["BearerToken"])
    text = resp.data.decode()
    total = pods = 0.0
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{"):
            value = float(line.rsplit(" ", 1)[1])
            total += value
            if 'resource="pods"' in line:
                pods += value
    return total, pods


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95),
            "mean": statistics.fmean(values) if values else float("nan"),
            "min": min(values, default=float("nan")), "max": max(values, default=float("nan"))}


def save(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {"benchmark": name, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **data}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


class FirstSeen:
    """Watches one kind in one namespace; remembers when each object (by `key`, default its
    name) first met `test`, and the last version of each (to report a status)."""

    def __init__(self, list_fn: Callable[..., Any], args: tuple, test: Callable[[dict], bool],
                 to_dict: Callable[[Any], dict], selector: str = "",
                 key: Callable[[dict], str | None] = lambda o: o["metadata"]["name"]) -> None:
        self.list_fn, self.args, self.test, self.to_dict = list_fn, args, test, to_dict
        self.selector, self.key = selector, key
        self.at: dict[str, float] = {}
        self.last: dict[str, dict] = {}
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        rv = None  # resume where the last stream ended: a gap could miss a short condition
        while not self._stop.is_set():
            try:
                for ev in watch.Watch().stream(self.list_fn, *self.args,
                                               label_selector=self.selector,
                                               timeout_seconds=30, resource_version=rv,
                                               allow_watch_bookmarks=True):
                    now = time.time()
                    if ev["type"] == "BOOKMARK":
                        rv = ev["raw_object"]["metadata"]["resourceVersion"]
                        continue
                    obj = self.to_dict(ev["object"])
                    rv = obj["metadata"].get("resourceVersion", rv)
                    name = self.key(obj)
                    if name is None:
                        continue
                    self.last[name] = obj
                    if self.test(obj):
                        self.at.setdefault(name, now)
                    if self._stop.is_set():
                        return
            except ApiException as exc:  # a watch that expired: list again
                if exc.status != 410:
                    raise
                rv = None

    def stop(self) -> None:
        self._stop.set()
