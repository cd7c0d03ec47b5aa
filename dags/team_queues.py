"""Seeds 002/003: two teams share ONE cluster through Kueue cohort queues.

team-a owns the cluster's GPUs (its work runs at the owner tier in ClusterQueue
skyshare-owner); team-b has no GPUs of its own and borrows them (skyshare-borrower,
nominal quota 0, borrowing within the cohort). When team-a's production job arrives, Kueue
reclaims the borrowed GPUs; the operator re-queues team-b's experiment, which runs again as
soon as team-a is done. Needs: skyshare-sandbox up --cluster campus:gpus=4
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import DAG, Param

from airflow_provider_skyshare.operators import MultiClusterGpuOperator

FLEET = os.path.join(os.path.dirname(__file__), "fleet-teams.yaml")


def team_dag(dag_id: str, task_id: str, org: str, owner: str, duration: str) -> DAG:
    with DAG(
        dag_id=dag_id,
        start_date=datetime(2026, 1, 1),
        schedule=None,
        catchup=False,
        default_args={"owner": owner},
        params={"duration": Param(duration, type="string")},
        tags=["skyshare", "example", "team-queues"],
    ) as dag:
        MultiClusterGpuOperator(
            task_id=task_id,
            org=org,
            gpus="T4:4",
            fleet_file=FLEET,
            image="rayproject/ray-ml:2.9.0-gpu",
            cmds=["python", "-c", "import ray; ray.init(); print(ray.cluster_resources())"],
            annotations={"sandbox.skyshare.dev/duration": "{{ params.duration }}"},
            max_preemptions=3,
        )
    return dag


team_b_dev = team_dag("team_b_dev", "team-b-experiment", "team-b", "team-b-dev", "20s")
team_a_prod = team_dag("team_a_prod", "team-a-production", "team-a", "team-a-prod", "10s")
