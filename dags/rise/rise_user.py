"""Seed scenario (SkyPilot multi-cluster example), rise's side: DAG bundle ``rise``.

``rise_user`` (owner romil): ``romil`` lands on rise as owner; ``romil-train`` waits until
romil is placed, then lands on bair as borrower (rise is full). bair's bundle holds
``bair_user``, whose ``abbeel`` reclaims bair; romil-train is placed again, without an
Airflow retry. Trigger rise_user first, then bair_user once romil-train runs (``./dev demo``).
The DAG is built in airflow_provider_skyshare/examples.py (the e2e tests build a
``deferrable=False`` twin from it).
"""

from __future__ import annotations

from airflow_provider_skyshare.examples import rise_user_dag

dag = rise_user_dag()
