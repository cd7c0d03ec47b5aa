"""(h) Database cost of a deferred task: bytes in the trigger table and XCom, skyshare vs
KubernetesPodOperator's KubernetesPodTrigger, for the seed fleet and a 20-cluster fleet.

Each figure comes from a real deferral (benchmarks.worker: execute() against the sandbox's
clusters in a fresh process, stopped at TaskDeferred) and Airflow's own serialisation of it.
The baseline is measured twice, as deployments configure it: through an Airflow connection
(its extras travel in the trigger kwargs) and through a kubeconfig file of its one cluster
(the file's content travels as config_dict).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import yaml

from benchmarks import fleets, worker
from benchmarks.common import admin_api
from benchmarks.first_placement import cleanup

CONN_ID = "kpo_rise"


def minified(kubeconfig: dict[str, Any], context: str) -> dict[str, Any]:
    """The kubeconfig a user of one cluster has: only that context, its cluster and user."""
    ctx = next(c for c in kubeconfig["contexts"] if c["name"] == context)
    return {"apiVersion": "v1", "kind": "Config", "current-context": context,
            "contexts": [ctx],
            "clusters": [c for c in kubeconfig["clusters"] if c["name"] == ctx["context"]["cluster"]],
            "users": [u for u in kubeconfig["users"] if u["name"] == ctx["context"]["user"]]}


def _kpo_kubeconfig(kubeconfig: str, directory: Path) -> str:
    path = directory / "kpo-rise.kubeconfig"
    path.write_text(yaml.safe_dump(minified(yaml.safe_load(Path(kubeconfig).read_text()),
                                            "rise@rise")))
    return str(path)


def _connection(kubeconfig: str) -> dict[str, str]:
    conn = {"conn_type": "kubernetes", "extra": {
        "kube_config_path": kubeconfig, "cluster_context": "rise@rise",
        "namespace": worker.NS, "in_cluster": False}}
    return {f"AIRFLOW_CONN_{CONN_ID.upper()}": json.dumps(conn)}


def total(row: dict[str, Any]) -> int:
    """Everything the deferred task keeps in the DB: trigger row, next_kwargs, XComs."""
    return (row["trigger_kwargs"] + row["next_kwargs"] + sum(row["xcom"].values())
            + sum(row.get("xcom_at_end", {}).values()))


def _row(label: str, result: dict[str, Any]) -> dict[str, Any]:
    keep = ("trigger_kwargs", "next_kwargs", "xcom", "xcom_at_end", "cluster")
    row = {"variant": label, **{k: result[k] for k in keep if k in result}}
    row["total"] = total(row)
    print(f"  {label}: trigger row {row['trigger_kwargs']} B, XCom "
          f"{sum(row['xcom'].values()) + sum(row.get('xcom_at_end', {}).values())} B, "
          f"total {row['total']} B", flush=True)
    return row


def _deferral(apis: dict[str, Any], variant: str, fleet_file: str, kubeconfig: str,
              **kw: Any) -> dict[str, Any]:
    """One real deferral; its pods deleted after, so each one meets the same free GPUs."""
    try:
        return worker.run_child(variant, f"db-{uuid.uuid4().hex[:8]}", fleet_file, kubeconfig,
                                **kw)
    finally:
        cleanup(apis)


def run(kubeconfig: str, fleet_files: dict[str, str], directory: Path) -> dict[str, Any]:
    """`fleet_files`: label -> fleet file, the seed's first; the sandbox hosts them all."""
    biggest = max(len(yaml.safe_load(Path(f).read_text())["clusters"])
                  for f in fleet_files.values())
    apis = {n: admin_api(kubeconfig, n) for n in fleets.cluster_names(biggest)}
    rows = []
    for label, fleet_file in fleet_files.items():
        result = _deferral(apis, "skyshare", fleet_file, kubeconfig)
        rows.append({**_row(f"skyshare, {label}", result), "fleet": label})
    seed = next(iter(fleet_files.values()))
    by_conn = _deferral(apis, "kpo", seed, kubeconfig, conn_id=CONN_ID,
                        env={**_connection(kubeconfig), "KUBECONFIG": ""})  # not read
    by_file = _deferral(apis, "kpo", seed, _kpo_kubeconfig(kubeconfig, directory))
    base = [_row("KubernetesPodTrigger, connection", by_conn),
            _row("KubernetesPodTrigger, kubeconfig of its cluster", by_file)]
    smallest = min(r["trigger_kwargs"] for r in base)
    for r in rows:
        r["ratio_to_smallest_baseline"] = r["trigger_kwargs"] / smallest
    return {"rows": rows, "baseline": base}
