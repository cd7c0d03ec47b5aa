"""Seeds 002/003: two teams share ONE cluster through Kueue cohort queues; DAG bundle ``team-a``.

team-a owns the cluster's GPUs (its work runs at the owner tier in ClusterQueue
skyshare-owner); team-b has no GPUs of its own and borrows them (skyshare-borrower,
nominal quota 0, borrowing within the cohort). When team-a's production job arrives, Kueue
reclaims the borrowed GPUs; the operator re-queues team-b's experiment, which runs again as
soon as team-a is done. Needs: skyshare-sandbox up --cluster campus:gpus=4 --fleet
dags/fleet-teams.yaml, and fleet-teams.yaml among [skyshare] fleet_file.
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import DAG, Param

from airflow_provider_skyshare.operators import MultiClusterGpuOperator

# One of the fleets the platform configured ([skyshare] fleet_file), not a file of its own.
FLEET = os.path.join(os.path.dirname(__file__), os.pardir, "fleet-teams.yaml")

with DAG(
    dag_id="team_a_prod",
    start_date=datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    default_args={"owner": "team-a-prod"},
    params={"duration": Param("10s", type="string")},
    tags=["skyshare", "example", "team-queues"],
):
    MultiClusterGpuOperator(
        task_id="team-a-production",
        gpus="T4:4",
        fleet_file=FLEET,
        image="rayproject/ray-ml:2.9.0-gpu",
        cmds=["python", "-c", "import ray; ray.init(); print(ray.cluster_resources())"],
        annotations={"sandbox.skyshare.dev/duration": "{{ params.duration }}"},
        max_preemptions=3,
    )
