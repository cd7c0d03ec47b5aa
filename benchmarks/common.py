"""Shared pieces of the benchmarks: sandbox access, apiserver metrics, stats, results."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
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


def request_total(api) -> float:
    """Sum of apiserver_request_total on this apiserver (its own count of served requests)."""
    resp = api.api_client.call_api("/metrics", "GET", _preload_content=False,
                                   _return_http_data_only=True, auth_settings=["BearerToken"])
    text = resp.data.decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


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
