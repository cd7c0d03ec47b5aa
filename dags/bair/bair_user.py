"""Seed scenario (SkyPilot multi-cluster example), bair's side: DAG bundle ``bair``.

``bair_user`` (owner abbeel): ``abbeel`` lands on bair as owner and reclaims the GPUs that
rise's romil-train borrowed. The org is bair's because this DAG is in bair's bundle; a DAG
here that says org="rise" is refused (docs/security.md).
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param

from airflow_provider_skyshare.operators import MultiClusterGpuOperator

PARAMS = {
    "duration": Param("20s", type="string", description="how long each job runs (Go duration)"),
    "gpus": Param("T4:2", type="string", description="GPUs per job, PRODUCT:COUNT"),
}


def job(task_id: str) -> MultiClusterGpuOperator:
    """A seed job: its org is the one of this DAG bundle (Airflow says it, not the DAG)."""
    return MultiClusterGpuOperator(
        task_id=task_id,
        gpus="{{ params.gpus }}",
        image="nvidia/cuda:12.4.1-base-ubuntu22.04",
        cmds=["sh", "-c", "nvidia-smi; sleep {{ params.duration[:-1] }}"],
        # The sandbox's KWOK nodes finish a pod after this annotation's duration.
        annotations={"sandbox.skyshare.dev/duration": "{{ params.duration }}"},
        max_preemptions=3,
    )


with DAG(
    dag_id="bair_user",
    description="As a bair user: abbeel on bair (owner) preempts romil-train",
    start_date=datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    default_args={"owner": "abbeel"},
    params=PARAMS,
    tags=["skyshare", "example"],
):
    job("abbeel")
