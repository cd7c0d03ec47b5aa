"""One GPU job with its shape as DAG params: a quick way to try placement by hand.

In rise's DAG bundle, so the job is rise's (docs/security.md): conf cannot choose the org.
Trigger it with conf, e.g. {"gpus": "T4:1", "duration": "30s"}. The e2e tests use it too.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param

from airflow_provider_skyshare.operators import MultiClusterGpuOperator

with DAG(
    dag_id="skyshare_job",
    start_date=datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    default_args={"owner": "romil"},
    params={
        "gpus": Param("T4:1", type="string"),
        "duration": Param("30s", type="string"),
        "image": Param("busybox", type="string"),
    },
    tags=["skyshare", "example"],
):
    MultiClusterGpuOperator(
        task_id="job",
        gpus="{{ params.gpus }}",
        image="{{ params.image }}",
        cmds=["sh", "-c", "echo attempt $SKYSHARE_ATTEMPT on $SKYSHARE_CLUSTER; sleep 30"],
        annotations={"sandbox.skyshare.dev/duration": "{{ params.duration }}"},
        unreachable_grace=10,
        max_preemptions=3,
    )
