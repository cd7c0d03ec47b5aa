"""metadb against a real, migrated Airflow metadata DB (SQLite): the rows are Airflow's own
tables, filled with the columns Airflow requires."""

from __future__ import annotations

import json
import sqlite3
import uuid
from contextlib import closing
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def insert(db: Path, table: str, **values) -> None:
    """One row; every other NOT NULL column without a default gets a placeholder."""
    with closing(sqlite3.connect(db)) as con:
        for _, name, kind, notnull, default, pk in con.execute(f"PRAGMA table_info({table})"):
            if notnull and default is None and not pk and name not in values:
                values[name] = 0 if "INT" in kind.upper() else (
                    "2026-01-01 00:00:00" if "DATE" in kind.upper() or "TIME" in kind.upper()
                    else "x")
        cols = ", ".join(values)
        con.execute("PRAGMA foreign_keys = OFF")
        con.execute(f"INSERT INTO {table} ({cols}) VALUES ({', '.join('?' * len(values))})",
                    list(values.values()))
        con.commit()


@pytest.fixture
def rows(airflow_db):
    db = Path(airflow_db) / "airflow.db"
    dag, run = "metadb_dag", f"run-{uuid.uuid4().hex[:8]}"
    insert(db, "dag_run", id=abs(hash(run)) % 10**9, dag_id=dag, run_id=run, run_type="manual",
           state="running")
    run_pk = abs(hash(run)) % 10**9
    for map_index, state, try_number in ((-1, "deferred", 1), (3, "failed", 2)):
        insert(db, "task_instance", id=str(uuid.uuid4()), dag_id=dag, task_id="job",
               run_id=run, map_index=map_index, state=state, try_number=try_number)
    timeline = [{"number": 1, "cluster": "rise", "tier": "owner", "pod": "p",
                 "namespace": "skyshare", "placed_at": 1.0}]
    insert(db, "xcom", dag_run_id=run_pk, dag_id=dag, task_id="job", run_id=run, map_index=3,
           key="skyshare_timeline", value=json.dumps(timeline))
    return dag, run, timeline


def test_task_states_by_map_index_and_missing(rows):
    from airflow_provider_skyshare import metadb
    from airflow_provider_skyshare.orphans import TaskState

    dag, run, _ = rows
    states = metadb.task_states({(dag, "job", run, -1), (dag, "job", run, 3),
                                 (dag, "job", run, 7), (dag, "other", run, -1)})
    assert states[(dag, "job", run, -1)] == TaskState("deferred", 1)
    assert states[(dag, "job", run, 3)] == TaskState("failed", 2)
    assert states[(dag, "job", run, 7)] is None
    assert states[(dag, "other", run, -1)] is None


def test_stored_timeline_is_the_map_index_own(rows):
    from airflow_provider_skyshare import metadb

    dag, run, timeline = rows
    assert metadb.stored_timeline(dag, run, "job", 3) == timeline
    assert metadb.stored_timeline(dag, run, "job", -1) is None
    assert metadb.stored_timeline(dag, "no-such-run", "job") is None


def test_no_database_says_what_to_set(monkeypatch, tmp_path):
    """A DB Airflow cannot open is MetadbUnavailable naming the setting, not a traceback."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    from airflow_provider_skyshare import metadb

    engine = create_engine(f"sqlite:///{tmp_path / 'missing' / 'airflow.db'}")
    monkeypatch.setattr("airflow.settings.Session", sessionmaker(bind=engine))
    with pytest.raises(metadb.MetadbUnavailable, match="SQL_ALCHEMY_CONN"):
        metadb.task_states({("d", "t", "r", -1)})
