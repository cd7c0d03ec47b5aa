"""A DAG of bair's bundle (Airflow team bair) that reaches for cluster connections (issue 16):
its own org's resolves, rise's does not (by its name or with rise's team spelled into it),
and no team's connection is in its worker's environment."""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import DAG, BaseHook, task


@task
def namespace_of(conn_id: str) -> list[str]:
    return [BaseHook.get_connection(conn_id).extra_dejson["namespace"]]


@task
def connections_in_environment() -> list[str]:
    return sorted(name for name in os.environ if name.startswith("AIRFLOW_CONN_"))


with DAG(dag_id="bair_reads_connections", start_date=datetime(2026, 1, 1), schedule=None,
         catchup=False, default_args={"owner": "abbeel", "retries": 0},
         tags=["skyshare", "spoof"]):
    namespace_of.override(task_id="own")("skyshare_bair_bair")
    namespace_of.override(task_id="rises")("skyshare_rise_bair")
    namespace_of.override(task_id="rises_spelled")("_rise___skyshare_rise_bair")
    connections_in_environment()
