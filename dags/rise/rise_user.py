"""Seed scenario (SkyPilot multi-cluster example), rise's side: DAG bundle ``rise``.

``rise_user`` (owner romil): ``romil`` lands on rise as owner; ``romil-train`` waits until
romil is placed, then lands on bair as borrower (rise is full). bair's bundle holds
``bair_user``, whose ``abbeel`` reclaims bair; romil-train is placed again, without an
Airflow retry. Trigger rise_user first, then bair_user once romil-train runs (``./dev demo``).
"""

from __future__ import annotations

from datetime import datetime

from airflow.providers.standard.sensors.python import PythonSensor
from airflow.sdk import DAG

from airflow_provider_skyshare.examples import SEED_PARAMS, seed_job


def placed(task_id: str, ti=None) -> bool:
    """True once the task has created its pod somewhere (its placement XCom exists)."""
    return ti.xcom_pull(task_ids=task_id, key="skyshare_placement") is not None


with DAG(
    dag_id="rise_user",
    description="As a rise user: romil on rise (owner), romil-train on bair (borrower)",
    start_date=datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    default_args={"owner": "romil"},
    params=SEED_PARAMS,
    tags=["skyshare", "example"],
):
    romil = seed_job("romil")
    romil_placed = PythonSensor(
        task_id="romil_placed", python_callable=placed, op_args=["romil"],
        # poke, not reschedule: a reschedule every second trips an Airflow race (the executor
        # reports the finished poke while the TI is already queued again -> marked failed).
        poke_interval=1, timeout=300, mode="poke",
    )
    romil_train = seed_job("romil-train")
    romil_placed >> romil_train
