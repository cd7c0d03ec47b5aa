"""DAGs of bair's bundle that claim to be rise's work: each must be refused (issue 12)."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_skyshare.operators import MultiClusterGpuOperator


def spoof(dag_id: str, owner: str, **claims: str) -> None:
    with DAG(dag_id=dag_id, start_date=datetime(2026, 1, 1), schedule=None, catchup=False,
             default_args={"owner": owner, "retries": 0}, tags=["skyshare", "spoof"]):
        MultiClusterGpuOperator(task_id="claim", gpus="T4:1", image="busybox", **claims)


spoof("spoof_org", "abbeel", org="rise")  # "I am rise": rise's clusters at the owner tier
spoof("spoof_owner", "romil")  # "I am romil" (a rise member) from bair's bundle
