"""Seed scenario (SkyPilot multi-cluster example), bair's side: DAG bundle ``bair``.

``bair_user`` (owner abbeel): ``abbeel`` lands on bair as owner and reclaims the GPUs that
rise's romil-train borrowed. The org is bair's because this DAG is in bair's bundle; a DAG
here that says org="rise" is refused (docs/security.md).
"""

from __future__ import annotations

from airflow_provider_skyshare.examples import bair_user_dag

dag = bair_user_dag()
