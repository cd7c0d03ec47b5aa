"""The seed's bair side with ``deferrable=False``: abbeel followed in a worker slot."""

from __future__ import annotations

from airflow_provider_skyshare.examples import bair_user_dag

dag = bair_user_dag("bair_user_sync", deferrable=False)
