"""Which pods no task owns: every task-instance state, every try relation, every bad pod."""

from __future__ import annotations

import pytest
from airflow.utils.state import TaskInstanceState

from airflow_provider_skyshare.orphans import LIVE_STATES, TaskState, task_of, why_orphaned
from airflow_provider_skyshare.pods import TaskIdentity


def pod(task: str | None = "d/t/manual__1", try_label: str | None = "2") -> dict:
    meta: dict = {"name": "p", "namespace": "skyshare", "labels": {}, "annotations": {}}
    if task is not None:
        meta["annotations"]["skyshare.dev/task"] = task
    if try_label is not None:
        meta["labels"]["skyshare.dev/try"] = try_label
    return {"metadata": meta}


def test_task_of_reads_the_annotation_and_try() -> None:
    assert task_of(pod()) == (TaskIdentity("d", "t", "manual__1", 2, -1), 2)
    assert task_of(pod("d/group.t/scheduled__2026-01-01T00:00:00+00:00/7")) == (
        TaskIdentity("d", "group.t", "scheduled__2026-01-01T00:00:00+00:00", 2, 7), 2)


@pytest.mark.parametrize("bad", [
    pod(task=None), pod(task=""), pod(task="d/t"), pod(task="d//r"), pod(task="d/t/r/x"),
    pod(task="d/t/r/1/2"), pod(try_label=None), pod(try_label="two"), {"metadata": {}}, {},
])
def test_task_of_refuses_what_it_cannot_read(bad: dict) -> None:
    assert task_of(bad) is None


def test_live_states_are_airflow_states() -> None:
    assert LIVE_STATES.issubset(s.value for s in TaskInstanceState)


@pytest.mark.parametrize("state", [s.value for s in TaskInstanceState] + [None])
def test_same_try_is_owned_exactly_in_live_states(state: str | None) -> None:
    why = why_orphaned(3, TaskState(state, 3))
    if state in {"scheduled", "queued", "running", "deferred", "restarting",
                 "up_for_reschedule", "awaiting_input"}:
        assert why == ""
    else:
        assert why == f"the task is {state or 'not scheduled (no state)'}"


@pytest.mark.parametrize("state", [s.value for s in TaskInstanceState])
def test_an_earlier_try_is_always_an_orphan(state: str) -> None:
    assert why_orphaned(1, TaskState(state, 2)) == "pod of try 1; the task is at try 2"


@pytest.mark.parametrize("state", [s.value for s in TaskInstanceState])
def test_a_newer_try_than_the_db_read_is_left_alone(state: str) -> None:
    """The pod list is read before the DB: a try started in between is not deleted."""
    assert why_orphaned(3, TaskState(state, 2)) == ""


def test_a_deleted_run_orphans_its_pods() -> None:
    assert "no such task instance" in why_orphaned(1, None)
