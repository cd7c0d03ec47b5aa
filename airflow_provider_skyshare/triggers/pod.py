"""The trigger that follows a task's pod and moves it when it is preempted.

Thin: all the work is in supervisor.Supervisor, which the worker runs too. The kwargs are
the supervisor's JSON state; the event carries the same state, because dag.test() (Airflow
3.3) drops defer kwargs and execute_complete must not need them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_skyshare.supervisor import Supervisor

# Task states that end the try this trigger serves: its pods have nobody to report to. (Not
# queued/scheduled: dag.test() runs triggers in-line while the task is in those states.)
FINISHED = frozenset({"success", "failed", "skipped", "upstream_failed", "removed",
                      "up_for_retry"})
# The first answer in a fresh triggerer takes seconds (6.5 s measured); following does not wait
# for it, so a late answer still counts rather than being given up on.
TASK_STATE_TIMEOUT = 120.0


class MultiClusterPodTrigger(BaseTrigger):
    """Watch the current attempt's pod; place again on preemption; fire once with a verdict."""

    def __init__(self, state: dict[str, Any]) -> None:
        super().__init__()
        self.state = state
        self._supervisor: Supervisor | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}", {"state": self.state})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        sup = self._supervisor = Supervisor.from_state(self.state, log=self.log)
        # Ask Airflow whether the task still waits for us, but follow meanwhile: the first
        # answer in a fresh triggerer costs seconds (it builds its in-process API: 6.5 s
        # measured), and a preemption in that window must move at once, not after it.
        asked = asyncio.create_task(self._task_state(sup))
        following = asyncio.create_task(self._follow(sup))
        try:
            await asyncio.wait({asked, following}, return_when=asyncio.FIRST_COMPLETED)
            state = asked.result() if asked.done() else None
            if state in FINISHED:
                # Marked failed/success (or cleared) before any triggerer ran this trigger;
                # Airflow can still start it once. Following or moving the work now would
                # revive it.
                await _end(following)
                deleted = await sup.delete_all(grace=0)
                self.log.warning("the task is %s, no longer deferred: not following it; "
                                 "deleted %s", state, ", ".join(deleted) or "no pod")
                event = _without_pod(sup, "abandoned",
                                     f"the task was {state} before its trigger ran")
            else:
                event = await following
        finally:
            # Cancelled by Airflow (the task was marked or cleared; on_kill follows): neither
            # the follower nor the question may outlive the trigger.
            await _end(following, asked)
        yield TriggerEvent(event)

    async def _follow(self, sup: Supervisor) -> dict[str, Any]:
        try:
            await sup.resume()
            return await sup.follow()
        except Exception as exc:
            self.log.exception("skyshare trigger failed")
            return _without_pod(sup, "error", f"{type(exc).__name__}: {exc}")

    async def _task_state(self, sup: Supervisor) -> str | None:
        """This task's state as Airflow has it, asked through the triggerer's supervisor;
        None where nobody can be asked (dag.test runs triggers in-process)."""
        ident = sup.identity
        try:
            from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

            states = await asyncio.wait_for(asyncio.to_thread(
                RuntimeTaskInstance.get_task_states, dag_id=ident.dag_id,
                task_ids=[ident.task_id], run_ids=[ident.run_id],
                map_index=ident.map_index if ident.map_index >= 0 else None), TASK_STATE_TIMEOUT)
            key = ident.task_id if ident.map_index < 0 else f"{ident.task_id}_{ident.map_index}"
            state = (states or {}).get(ident.run_id, {}).get(key)
        except Exception as exc:  # noqa: BLE001 - only a safeguard: never block the work on it
            self.log.debug("task state not available here: %s", exc)
            return None
        return str(getattr(state, "value", state)) if state else None

    async def on_kill(self) -> None:
        """A user marked the task failed/success or cleared it: delete its pod wherever it is."""
        sup = self._supervisor or Supervisor.from_state(self.state, log=self.log)
        deleted = await sup.delete_all(grace=0)
        self.log.info("on_kill deleted %s", ", ".join(deleted) or "no pod")


async def _end(*tasks: asyncio.Task[Any]) -> None:
    """Cancel and wait until done. Repeated: on Python < 3.12 `asyncio.wait_for` drops a cancel
    that arrives as its inner call completes, and a follower that survived would place the
    work again after on_kill deleted it."""
    while pending := [t for t in tasks if not t.done()]:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=0.5)


def _without_pod(sup: Supervisor, status: str, message: str) -> dict[str, Any]:
    """An event that names no current pod (the supervisor did not reach a verdict on one)."""
    return {**sup.state(), "status": status, "message": message, "outcome": None,
            "cluster": None, "namespace": None, "pod": None}
