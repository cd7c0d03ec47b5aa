"""One GPU job with everything as a DAG param: a quick way to try placement by hand.

Trigger it with conf, e.g. {"org": "rise", "owner": "romil", "gpus": "T4:1", "duration": "30s"}.
The e2e fault tests use it too.
"""

from __future__ import annotations

import os
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
        "org": Param("rise", type="string"),
        "user": Param("romil", type="string", description="member of the org"),
        "gpus": Param("T4:1", type="string"),
        "duration": Param("30s", type="string"),
        "image": Param("busybox", type="string"),
    },
    tags=["skyshare", "example"],
):
    MultiClusterGpuOperator(
        task_id="job",
        org="{{ params.org }}",
        user="{{ params.user }}",
        gpus="{{ params.gpus }}",
        fleet_file=os.path.join(os.path.dirname(__file__), "fleet.yaml"),
        image="{{ params.image }}",
        cmds=["sh", "-c", "echo attempt $SKYSHARE_ATTEMPT on $SKYSHARE_CLUSTER; sleep 30"],
        annotations={"sandbox.skyshare.dev/duration": "{{ params.duration }}"},
        unreachable_grace=10,
        max_preemptions=3,
    )
