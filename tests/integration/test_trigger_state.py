"""A trigger Airflow starts for a task that already left deferral must not revive its work.

The pods and clusters are the sandbox's; the task's state is what Airflow's triggerer would
answer to `get_task_states` (standing in here for the triggerer's supervisor).
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

from airflow_provider_skyshare.triggers import pod as trigger_module
from airflow_provider_skyshare.triggers.pod import MultiClusterPodTrigger
from tests.helpers.fixtures import wait_for
from tests.integration.test_reliability import closing, make, pods_of

pytestmark = pytest.mark.integration


def answer(monkeypatch, states: dict) -> list[dict]:
    asked: list[dict] = []

    def get_task_states(**kwargs):
        asked.append(kwargs)
        return states

    monkeypatch.setattr(RuntimeTaskInstance, "get_task_states", staticmethod(get_task_states))
    return asked


async def first_event(trigger: MultiClusterPodTrigger, timeout: float = 60) -> dict:
    async def first() -> dict:
        async for event in trigger.run():
            return event.payload
        raise AssertionError("the trigger ended without an event")

    return await asyncio.wait_for(first(), timeout)


@pytest.mark.parametrize("state", ["failed", "success", "up_for_retry"])
def test_a_finished_task_gets_its_pods_deleted_not_followed(
        state, monkeypatch, admin, kube_env, no_leaks):
    sup = make("late-trigger", duration="300s")
    attempt = asyncio.run(closing(sup.start()))
    assert [p.metadata.name for p in pods_of(admin, attempt.cluster, sup)] == [attempt.pod]
    ident = sup.identity
    asked = answer(monkeypatch, {ident.run_id: {ident.task_id: state}})
    event = asyncio.run(closing(first_event(MultiClusterPodTrigger(sup.state()))))
    assert asked == [{"dag_id": ident.dag_id, "task_ids": [ident.task_id],
                      "run_ids": [ident.run_id], "map_index": None}]
    assert event["status"] == "abandoned"
    assert event["message"] == f"the task was {state} before its trigger ran"
    left = [p for c in ("rise", "bair") for p in pods_of(admin, c, sup)
            if p.metadata.deletion_timestamp is None]
    assert left == []


def test_a_deferred_task_is_followed(monkeypatch, admin, kube_env, no_leaks):
    sup = make("deferred-trigger", duration="2s")
    asyncio.run(closing(sup.start()))
    ident = sup.identity
    answer(monkeypatch, {ident.run_id: {ident.task_id: "deferred"}})
    event = asyncio.run(closing(first_event(MultiClusterPodTrigger(sup.state()))))
    assert event["status"] == "success"
    asyncio.run(closing(sup.delete_all(0)))


def test_where_nobody_can_be_asked_the_task_is_followed(admin, kube_env, no_leaks):
    """dag.test() and plain processes have no triggerer supervisor to ask."""
    sup = make("unasked-trigger", duration="2s")
    asyncio.run(closing(sup.start()))
    event = asyncio.run(closing(first_event(MultiClusterPodTrigger(sup.state()))))
    assert event["status"] == "success"
    asyncio.run(closing(sup.delete_all(0)))


def test_a_late_trigger_records_when_the_pod_really_started(admin, kube_env, no_leaks):
    """A triggerer that picks the task up (or restarts) after the pod started takes the pod's
    own start stamp for the timeline, not the moment it looked."""
    sup = make("late-start", duration="6s")
    attempt = asyncio.run(closing(sup.start()))

    def started_stamp():
        for p in pods_of(admin, attempt.cluster, sup):
            for cs in p.status.container_statuses or []:
                if cs.state.running and time.time() - cs.state.running.started_at.timestamp() > 3:
                    return cs.state.running.started_at.timestamp()
        return None

    stamp = wait_for(started_stamp, 60, "the pod running for more than 3 s")
    event = asyncio.run(closing(first_event(MultiClusterPodTrigger(sup.state()))))
    assert event["status"] == "success"
    (only,) = event["timeline"]
    assert only["started_at"] == max(stamp, only["placed_at"])
    assert only["placed_at"] <= only["started_at"] < only["ended_at"]
    asyncio.run(closing(sup.delete_all(0)))


def test_a_slow_answer_does_not_hold_up_following(monkeypatch, admin, kube_env, no_leaks):
    """A fresh triggerer's first task-state answer takes seconds (Airflow builds its in-process
    API then): the trigger follows meanwhile, so a verdict or a move is not held up by it."""
    sup = make("slow-answer", duration="2s")
    asyncio.run(closing(sup.start()))
    release = threading.Event()

    def get_task_states(**kwargs):
        release.wait(120)  # answers only once the test is over
        return {}

    monkeypatch.setattr(RuntimeTaskInstance, "get_task_states", staticmethod(get_task_states))
    async def timed() -> tuple[dict, float]:
        started = time.monotonic()
        try:
            event = await first_event(MultiClusterPodTrigger(sup.state()))
        finally:
            release.set()  # asyncio.run's shutdown waits for the asking thread
        return event, time.monotonic() - started

    try:
        event, took = asyncio.run(closing(timed()))
    finally:
        release.set()
    assert event["status"] == "success"
    # the pod runs 2 s; waiting for the answer would take 120 s (TASK_STATE_TIMEOUT)
    assert took < 30, f"the verdict waited for the task-state answer ({took:.1f}s)"
    asyncio.run(closing(sup.delete_all(0)))


def test_a_finished_answer_arriving_late_stops_following(monkeypatch, admin, kube_env, no_leaks):
    """The answer may come while the trigger already follows: it still ends the follower and
    deletes the pod of a task that no longer waits for it."""
    sup = make("late-answer", duration="300s")
    attempt = asyncio.run(closing(sup.start()))
    ident = sup.identity
    running = threading.Event()

    def get_task_states(**kwargs):
        # answer once the trigger follows the running pod
        wait_for(lambda: any(p.status.phase == "Running"
                             for p in pods_of(admin, attempt.cluster, sup)), 60, "pod running")
        running.set()
        return {ident.run_id: {ident.task_id: "failed"}}

    monkeypatch.setattr(RuntimeTaskInstance, "get_task_states", staticmethod(get_task_states))
    event = asyncio.run(closing(first_event(MultiClusterPodTrigger(sup.state()))))
    assert running.is_set()
    assert event["status"] == "abandoned"
    left = [p for c in ("rise", "bair") for p in pods_of(admin, c, sup)
            if p.metadata.deletion_timestamp is None]
    assert left == []


def test_a_cancelled_trigger_leaves_no_follower_behind(monkeypatch, admin, kube_env, no_leaks):
    """Airflow cancels the trigger of a task marked failed or success (then calls on_kill),
    possibly before its task-state question is answered: the follower must end with it, or it
    would see the pod deleted and place the work again."""
    sup = make("cancelled-trigger", duration="300s")
    asyncio.run(closing(sup.start()))
    release = threading.Event()
    monkeypatch.setattr(RuntimeTaskInstance, "get_task_states",
                        staticmethod(lambda **kw: release.wait(120) and {}))

    async def scenario() -> tuple[list[asyncio.Task], list[asyncio.Task]]:
        trigger = MultiClusterPodTrigger(sup.state())
        run = asyncio.create_task(first_event(trigger))
        await asyncio.to_thread(wait_for, lambda: trigger._supervisor and trigger._supervisor.state.pod,
                                30, "the trigger following the pod")
        mine = [t for t in asyncio.all_tasks()
                if "MultiClusterPodTrigger" in t.get_coro().__qualname__]
        try:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
            await asyncio.wait(mine, timeout=5)
            return mine, [t for t in mine if not t.done()]
        finally:
            release.set()  # asyncio.run's shutdown waits for the asking thread

    try:
        mine, left = asyncio.run(closing(scenario()))
    finally:
        release.set()
        asyncio.run(closing(sup.delete_all(0)))
    assert len(mine) == 2, f"expected the follower and the question: {mine}"
    assert left == [], f"still running after the trigger was cancelled: {left}"


@pytest.mark.parametrize(("task_state", "deletes"), [
    ("deferred", False),  # handed to another triggerer (this one's heartbeat was late)
    ("failed", True), ("success", True), (None, True),  # marked or cleared by a user
])
def test_on_kill_deletes_the_pod_unless_the_task_is_still_deferred(
        task_state, deletes, monkeypatch, admin, kube_env, no_leaks):
    """Airflow 3.3 calls on_kill both when a user acts on the task and when it moves the
    trigger to another triggerer (seen in the production-shaped e2e): only the first may
    delete the pod, or the new triggerer finds it gone and moves the work for nothing."""
    sup = make(f"on-kill-{task_state}", duration="300s")
    attempt = asyncio.run(closing(sup.start()))
    ident = sup.identity
    answer(monkeypatch, {ident.run_id: {ident.task_id: task_state} if task_state else {}})
    asyncio.run(closing(MultiClusterPodTrigger(sup.state()).on_kill()))
    live = [p.metadata.name for p in pods_of(admin, attempt.cluster, sup)
            if p.metadata.deletion_timestamp is None]
    assert live == ([] if deletes else [attempt.pod])
    asyncio.run(closing(sup.delete_all(0)))


def test_on_kill_cancelled_mid_way_still_deletes_the_pod(monkeypatch, admin, kube_env,
                                                         no_leaks):
    """Airflow 3.3 repeats a trigger's cancel on every sync of its runner (about 1 s) until
    the trigger has ended, and the repeat cancels on_kill as well (here: once, while it waits
    for the task's state): a task marked failed on a busy triggerer kept its pod running."""
    sup = make("on-kill-again", duration="300s")
    attempt = asyncio.run(closing(sup.start()))
    release = threading.Event()
    monkeypatch.setattr(RuntimeTaskInstance, "get_task_states",
                        staticmethod(lambda **kw: release.wait(60) and {}))

    async def scenario() -> None:
        kill = asyncio.create_task(MultiClusterPodTrigger(sup.state()).on_kill())
        await asyncio.sleep(0)  # on_kill has started and is asking for the task's state
        kill.cancel("user-action")  # Airflow's repeated cancel, reaching on_kill mid-way
        await asyncio.gather(kill, return_exceptions=True)
        assert kill.cancelled() and trigger_module._deciding, "the decision ended with on_kill"
        release.set()  # the answer comes: no such task (marked and gone): delete
        await asyncio.wait(set(trigger_module._deciding), timeout=60)

    try:
        asyncio.run(closing(scenario()))
    finally:
        release.set()
    live = [p.metadata.name for p in pods_of(admin, attempt.cluster, sup)
            if p.metadata.deletion_timestamp is None]
    assert live == []
    asyncio.run(closing(sup.delete_all(0)))
