"""What Airflow's metadata DB says of a task: the one module of the CLI and UI that reads it.

Reads only (timelines stored in XCom, task instance states for `skyshare orphans`), through
Airflow's own models and session, so any database Airflow is configured with works. Where
no Airflow database is reachable, ``MetadbUnavailable`` says what to set.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_skyshare.orphans import TaskState

TIMELINE_KEYS = ("return_value", "skyshare_timeline")  # success, then any other verdict
TaskKey = tuple[str, str, str, int]  # (dag_id, task_id, run_id, map_index)


class MetadbUnavailable(RuntimeError):
    """Airflow's metadata DB cannot be read here, with what to fix."""


def _errors() -> tuple[type[BaseException], ...]:
    from airflow.exceptions import AirflowConfigException
    from sqlalchemy.exc import SQLAlchemyError

    return (SQLAlchemyError, AirflowConfigException)


def _unavailable(exc: BaseException) -> MetadbUnavailable:
    return MetadbUnavailable(
        f"cannot read Airflow's metadata DB ({type(exc).__name__}: {exc}). Run this where "
        "Airflow is configured (AIRFLOW_HOME / AIRFLOW__DATABASE__SQL_ALCHEMY_CONN)")


def stored_timeline(dag_id: str, run_id: str, task_id: str,
                    map_index: int = -1) -> list[dict[str, Any]] | None:
    """The timeline a finished task left in XCom, or None."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    try:
        with create_session() as session:
            for key in TIMELINE_KEYS:
                row = session.query(XComModel).filter_by(
                    dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=map_index,
                    key=key).first()
                if row is not None:
                    return XComModel.deserialize_value(row)
    except _errors() as exc:
        raise _unavailable(exc) from exc
    return None


def task_states(keys: set[TaskKey]) -> dict[TaskKey, TaskState | None]:
    """Each task instance's state and try (None: no such task instance)."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    states: dict[TaskKey, TaskState | None] = {}
    try:
        with create_session() as session:
            for dag_id, task_id, run_id, map_index in sorted(keys):
                row = session.query(TaskInstance.state, TaskInstance.try_number).filter_by(
                    dag_id=dag_id, task_id=task_id, run_id=run_id, map_index=map_index).first()
                states[(dag_id, task_id, run_id, map_index)] = (
                    TaskState(str(row[0]) if row[0] else None, int(row[1] or 0))
                    if row else None)
    except _errors() as exc:
        raise _unavailable(exc) from exc
    return states
