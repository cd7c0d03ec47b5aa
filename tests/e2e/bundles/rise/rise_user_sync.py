"""The seed's rise side with ``deferrable=False``: both jobs followed in a worker slot."""

from __future__ import annotations

from airflow_provider_skyshare.examples import rise_user_dag

dag = rise_user_dag("rise_user_sync", deferrable=False)
