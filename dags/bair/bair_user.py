"""Seed scenario (SkyPilot multi-cluster example), bair's side: DAG bundle ``bair``.

``bair_user`` (owner abbeel): ``abbeel`` lands on bair as owner and reclaims the GPUs that
rise's romil-train borrowed. The org is bair's because this DAG is in bair's bundle; a DAG
here that says org="rise" is refused (docs/security.md).
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_skyshare.examples import SEED_PARAMS, seed_job

with DAG(
    dag_id="bair_user",
    description="As a bair user: abbeel on bair (owner) preempts romil-train",
    start_date=datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    default_args={"owner": "abbeel"},
    params=SEED_PARAMS,
    tags=["skyshare", "example"],
):
    seed_job("abbeel")
