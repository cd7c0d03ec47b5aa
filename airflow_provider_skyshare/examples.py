"""Builders of the example DAGs (dags/): one bundle per org, each holding only its own DAGs.

A DAG bundle is a folder of its own, so code its DAGs share lives here, importable from
every bundle. None of them says an org: the bundle (Airflow) does (docs/security.md).
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import DAG, Param

from airflow_provider_skyshare.operators import MultiClusterGpuOperator

SEED_PARAMS = {
    "duration": Param("20s", type="string", description="how long each job runs (Go duration)"),
    "gpus": Param("T4:2", type="string", description="GPUs per job, PRODUCT:COUNT"),
}


def seed_job(task_id: str, deferrable: bool | None = None) -> MultiClusterGpuOperator:
    """A job of the seed scenario (SkyPilot's multi-cluster example)."""
    return MultiClusterGpuOperator(
        deferrable=deferrable,
        task_id=task_id,
        gpus="{{ params.gpus }}",
        image="nvidia/cuda:12.4.1-base-ubuntu22.04",
        cmds=["sh", "-c", "nvidia-smi; sleep {{ params.duration[:-1] }}"],
        # The sandbox's KWOK nodes finish a pod after this annotation's duration.
        annotations={"sandbox.skyshare.dev/duration": "{{ params.duration }}"},
        max_preemptions=3,
    )


def placed(task_id: str, ti=None) -> bool:
    """True once the task has created its pod somewhere (its placement XCom exists)."""
    return ti.xcom_pull(task_ids=task_id, key="skyshare_placement") is not None


def rise_user_dag(dag_id: str = "rise_user", deferrable: bool | None = None) -> DAG:
    """rise's side of the seed: romil, then (once romil is placed) romil-train."""
    from airflow.providers.standard.sensors.python import PythonSensor

    with DAG(dag_id=dag_id, start_date=datetime(2026, 1, 1), schedule=None, catchup=False,
             description="As a rise user: romil on rise (owner), romil-train on bair (borrower)",
             default_args={"owner": "romil"}, params=SEED_PARAMS,
             tags=["skyshare", "example"]) as dag:
        romil_placed = PythonSensor(
            task_id="romil_placed", python_callable=placed, op_args=["romil"],
            # poke, not reschedule: a reschedule every second trips an Airflow race (the
            # executor reports the finished poke while the TI is already queued again).
            poke_interval=1, timeout=300, mode="poke",
        )
        seed_job("romil", deferrable)
        romil_placed >> seed_job("romil-train", deferrable)
    return dag


def bair_user_dag(dag_id: str = "bair_user", deferrable: bool | None = None) -> DAG:
    """bair's side of the seed: abbeel, who reclaims bair."""
    with DAG(dag_id=dag_id, start_date=datetime(2026, 1, 1), schedule=None, catchup=False,
             description="As a bair user: abbeel on bair (owner) preempts romil-train",
             default_args={"owner": "abbeel"}, params=SEED_PARAMS,
             tags=["skyshare", "example"]) as dag:
        seed_job("abbeel", deferrable)
    return dag


def team_dag(folder: str, dag_id: str, task_id: str, owner: str, duration: str) -> DAG:
    """Seeds 002/003: a team's job on the one cluster the teams share (dags/fleet-teams.yaml,
    one of the fleets the platform configured, never a file of the DAG's own)."""
    with DAG(dag_id=dag_id, start_date=datetime(2026, 1, 1), schedule=None, catchup=False,
             default_args={"owner": owner}, params={"duration": Param(duration, type="string")},
             tags=["skyshare", "example", "team-queues"]) as dag:
        MultiClusterGpuOperator(
            task_id=task_id,
            gpus="T4:4",
            fleet_file=os.path.join(folder, os.pardir, "fleet-teams.yaml"),
            image="rayproject/ray-ml:2.9.0-gpu",
            cmds=["python", "-c", "import ray; ray.init(); print(ray.cluster_resources())"],
            annotations={"sandbox.skyshare.dev/duration": "{{ params.duration }}"},
            max_preemptions=3,
        )
    return dag


GANG_FLEET = "fleet-gangs.yaml"


def gang_fleet(folder: str) -> str:
    """The platform's fleet with 2-node clusters (dags/fleet-gangs.yaml) as Airflow is
    configured with it; where Airflow configures none (development), the one next to the
    bundle."""
    from airflow_provider_skyshare.operators.gpu import configured_fleet_files

    configured = [f for f in configured_fleet_files() if os.path.basename(f) == GANG_FLEET]
    return configured[0] if configured else os.path.join(folder, os.pardir, GANG_FLEET)


def gang_dag(folder: str, dag_id: str = "rise_gang") -> DAG:
    """A 2-node training job (a gang: two pods of 2 T4 each, admitted together as one Kueue
    pod group on one cluster, moved whole) on the fleet where rise owns den, two nodes."""
    with DAG(dag_id=dag_id, start_date=datetime(2026, 1, 1), schedule=None, catchup=False,
             description="As a rise user: a 2-node torchrun job, placed and moved as one",
             default_args={"owner": "romil"},
             params={"duration": Param("10s", type="string")},
             tags=["skyshare", "example", "gang"]) as dag:
        MultiClusterGpuOperator(
            task_id="romil-ddp",
            gpus="T4:2",  # per node
            nodes=2,
            fleet_file=gang_fleet(folder),
            image="nvcr.io/nvidia/pytorch:24.05-py3",
            # torchrun reads --nnodes, --node_rank, --master_addr, --master_port and
            # --nproc_per_node from the PET_* variables each member gets
            cmds=["torchrun", "train.py"],
            annotations={"sandbox.skyshare.dev/duration": "{{ params.duration }}"},
            max_preemptions=3,
        )
    return dag
