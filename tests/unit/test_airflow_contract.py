"""What the trigger relies on in Airflow beyond its documented operator API: if an upgrade
changes any of it, these fail with what to look at, instead of tasks hanging or failing.
"""

from __future__ import annotations

import asyncio
import inspect

from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance
from airflow.sdk.execution_time.xcom import XCom
from airflow.triggers.base import (
    BaseTrigger,
    TaskFailedEvent,
    TaskSkippedEvent,
    TaskSuccessEvent,
    TriggerEvent,
)

from airflow_provider_skyshare.triggers.pod import MultiClusterPodTrigger


def parameters(func) -> set[str]:
    return set(inspect.signature(func).parameters)


def test_xcom_aset_stores_the_timeline_from_a_trigger():
    """triggers/pod.py _store_timeline: the end events' own xcoms= are stored double-encoded
    in 3.3 (a downstream task would read a string), so the trigger stores the XCom itself."""
    assert asyncio.iscoroutinefunction(XCom.aset), "XCom.aset is no longer a coroutine"
    needed = {"key", "value", "dag_id", "task_id", "run_id", "map_index"}
    assert needed <= parameters(XCom.aset), parameters(XCom.aset)


def test_get_task_states_answers_whether_the_task_still_waits():
    """triggers/pod.py _task_state asks it (through the triggerer's supervisor)."""
    needed = {"dag_id", "task_ids", "run_ids", "map_index"}
    assert needed <= parameters(RuntimeTaskInstance.get_task_states)


def test_a_trigger_outside_a_triggerer_has_no_trigger_id():
    """dag.test() runs triggers in-line without a trigger row and ignores end events: the
    trigger recognises it by trigger_id None and fires a TriggerEvent for execute_complete."""
    trigger = MultiClusterPodTrigger(state={})
    assert isinstance(trigger, BaseTrigger)
    assert trigger.trigger_id is None


def test_end_events_end_the_task_with_its_state():
    assert str(TaskSuccessEvent().task_instance_state) == "success"
    assert str(TaskFailedEvent().task_instance_state) == "failed"
    assert str(TaskSkippedEvent().task_instance_state) == "skipped"  # skip_on_exit_code
    assert isinstance(TaskSuccessEvent(), TriggerEvent)


def test_the_trigger_serialises_what_it_needs():
    trigger = MultiClusterPodTrigger(state={"a": 1}, finish={"get_logs": False})
    path, kwargs = trigger.serialize()
    assert path == "airflow_provider_skyshare.triggers.pod.MultiClusterPodTrigger"
    assert kwargs == {"state": {"a": 1}, "finish": {"get_logs": False}}
    assert MultiClusterPodTrigger(**kwargs).serialize() == (path, kwargs)
