"""The trigger that follows a task's pod, moves it when it is preempted, and ends the task.

Thin: following is supervisor.Supervisor's (which the worker runs too), acting on a verdict is
finish.finish's. The trigger ends the task itself (TaskSuccessEvent / TaskFailedEvent, which
respect retries, or TaskSkippedEvent for skip_on_exit_code), so the task goes from deferred
straight to done: no worker is started to read the verdict, and the stale executor event of
the deferral exit cannot fail the task (apache/airflow#67287), so there is no delay before a
verdict. dag.test() runs triggers in-line and ignores such events: there (no trigger id) the
verdict goes to execute_complete as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from airflow.triggers.base import (
    BaseTrigger,
    TaskFailedEvent,
    TaskSkippedEvent,
    TaskSuccessEvent,
    TriggerEvent,
)
from asgiref.sync import sync_to_async

from airflow_provider_skyshare import inventory
from airflow_provider_skyshare.finish import (
    FinishPolicy,
    event_payload,
    failure_message,
    finish,
    skip_reason,
)
from airflow_provider_skyshare.fleet import FleetError
from airflow_provider_skyshare.fleetconf import saved_fleet
from airflow_provider_skyshare.follow import Follow, Status, Verdict
from airflow_provider_skyshare.supervisor import Supervisor

# Task states that end the try this trigger serves: its pods have nobody to report to. (Not
# queued/scheduled: dag.test() runs triggers in-line while the task is in those states.)
FINISHED = frozenset({"success", "failed", "skipped", "upstream_failed", "removed",
                      "up_for_retry"})
# The first answer in a fresh triggerer takes seconds (6.5 s measured); following does not wait
# for it, so a late answer still counts rather than being given up on.
TASK_STATE_TIMEOUT = 120.0
# A trigger cancelled while its task is still deferred was moved to another triggerer.
HANDED_OVER = "deferred"
# on_kill asks for the task's state within this, well inside the time Airflow gives on_kill
# ([triggerer] on_kill_timeout, 30 s by default) so that the delete still happens.
ON_KILL_STATE_TIMEOUT = 10.0
# A saved task whose fleet cannot be read (or lost its pod's cluster) is tried again this often.
FLEET_RETRY_SECONDS = 60.0
TIMELINE_XCOM = "skyshare_timeline"  # the timeline of a task that did not succeed


class MultiClusterPodTrigger(BaseTrigger):
    """Watch the current attempt's pod; place again on preemption; end the task."""

    def __init__(self, state: dict[str, Any], finish: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.state = state
        self.finish = finish or {}
        self._supervisor: Supervisor | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"state": self.state, "finish": self.finish})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        inventory.keep_live()  # this triggerer's placements read live capacity (inventory.py)
        policy = FinishPolicy.from_dict(self.finish)
        sup = self._supervisor = Supervisor(await self._saved(), log=self.log,
                                            live_logs=policy.live_logs)
        state, verdict = await self._verdict(sup)
        shown = sup.logs_shown(state)  # the live log got this far: finish prints the rest
        if self.trigger_id is None or verdict.status is Status.ABANDONED:
            # dag.test() (no trigger row) resumes the task with this event; an abandoned
            # task is no longer deferred, so Airflow ignores it.
            yield TriggerEvent(event_payload(state, verdict, shown))
            return
        await finish(state, verdict, policy, self.log, shown)
        skipped = skip_reason(verdict, policy)
        success = verdict.status is Status.SUCCESS and not skipped
        await self._store_timeline(state, "return_value" if success else TIMELINE_XCOM)
        if skipped:
            self.log.info("%s", skipped)
            yield TaskSkippedEvent()
        elif success:
            yield TaskSuccessEvent()
        else:
            self.log.error("%s", failure_message(state, verdict))
            yield TaskFailedEvent()

    async def _verdict(self, sup: Supervisor) -> tuple[Follow, Verdict]:
        """Follow to a verdict, while asking Airflow whether the task still waits for us: the
        first answer in a fresh triggerer costs seconds (it builds its in-process API: 6.5 s
        measured), and a preemption in that window must move at once, not after it."""
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
                return sup.state, Verdict(Status.ABANDONED,
                                          f"the task was {state} before its trigger ran")
            return await following
        finally:
            # Cancelled by Airflow (the task was marked or cleared; on_kill follows): neither
            # the follower nor the question may outlive the trigger.
            await _end(following, asked)

    async def _saved(self) -> Follow:
        """The saved state, with the fleet its row names read again. Until that fleet can be
        read and still holds the cluster of the running attempt, nothing is followed or
        placed (a move then could leave that pod running beside the new one): the task
        stays deferred, and the log says every minute what to fix."""
        while True:
            try:
                saved = await sync_to_async(saved_fleet)(self.state)
                state = Follow.from_dict(self.state, saved.fleet)
            except FleetError as exc:
                problem = str(exc)
            else:
                if saved.changed:
                    self.log.warning("%s", saved.note())
                lost = state.unreachable_attempt()
                if lost is None:
                    return _without_lost_orphans(state, self.log)
                problem = (f"attempt {lost.number} runs as pod {lost.pod} on cluster "
                           f"{lost.cluster}, which the fleet {saved.fleet.source} no longer "
                           f"gives org {state.job.request.org}. Fix: put the cluster back in "
                           "the fleet (or delete the pod there and clear the task)")
            self.log.error("not following this task yet: %s; trying again in %gs", problem,
                           FLEET_RETRY_SECONDS)
            await _pause(FLEET_RETRY_SECONDS)

    async def _follow(self, sup: Supervisor) -> tuple[Follow, Verdict]:
        try:
            state = await sup.follow()
        except Exception as exc:  # a bug or an unexpected answer: fail the task, loudly
            self.log.exception("skyshare trigger failed")
            return sup.state, Verdict(Status.ERROR, f"{type(exc).__name__}: {exc}")
        assert state.verdict is not None  # run() returns at DONE only
        return state, state.verdict

    async def _store_timeline(self, state: Follow, key: str) -> None:
        """The timeline in XCom, as execute_complete would return or push it. (Not the end
        event's xcoms=: Airflow 3.3 stores those double-encoded.)"""
        from airflow.sdk.execution_time.xcom import XCom

        ident = state.job.identity
        await XCom.aset(key, state.timeline.to_list(), dag_id=ident.dag_id,
                        task_id=ident.task_id, run_id=ident.run_id, map_index=ident.map_index)

    async def _task_state(self, sup: Supervisor,
                          timeout: float = TASK_STATE_TIMEOUT) -> str | None:
        """This task's state as Airflow has it, asked through the triggerer's supervisor;
        None where nobody can be asked (dag.test runs triggers in-process) or no answer came
        in time."""
        ident = sup.job.identity
        try:
            from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

            states = await asyncio.wait_for(asyncio.to_thread(
                RuntimeTaskInstance.get_task_states, dag_id=ident.dag_id,
                task_ids=[ident.task_id], run_ids=[ident.run_id],
                map_index=ident.map_index if ident.map_index >= 0 else None), timeout)
            key = ident.task_id if ident.map_index < 0 else f"{ident.task_id}_{ident.map_index}"
            state = (states or {}).get(ident.run_id, {}).get(key)
        except Exception as exc:  # noqa: BLE001 - only a safeguard: never block the work on it
            self.log.debug("task state not available here: %s", exc)
            return None
        return str(getattr(state, "value", state)) if state else None

    async def on_kill(self) -> None:
        """Airflow cancelled this trigger here. A user marked the task failed/success or
        cleared it: delete its pod wherever it is. But Airflow 3.3 says the same when it hands
        the trigger to another triggerer (this one's heartbeat was late): the task is still
        deferred then, and the pod is the new triggerer's to follow, not ours to delete.
        No answer in time: delete (a user's action must not leave a pod running; a needless
        move after a hand-over is the lesser harm).

        Airflow 3.3 repeats the cancel on every sync of its trigger runner (about 1 s) until
        the trigger has ended, and the repeat cancels on_kill too, without a word: the
        decision runs in a task of its own, which those repeats cannot reach."""
        deciding = asyncio.create_task(self._on_kill(), name=f"on_kill of trigger {self.trigger_id}")
        _deciding.add(deciding)
        deciding.add_done_callback(self._decided)
        await asyncio.shield(deciding)

    def _decided(self, deciding: asyncio.Task[None]) -> None:
        """Its error is logged here: once on_kill was cancelled, nobody awaits the task."""
        _deciding.discard(deciding)
        if not deciding.cancelled() and deciding.exception() is not None:
            self.log.error("on_kill failed", exc_info=deciding.exception())

    async def _on_kill(self) -> None:
        sup = self._supervisor
        if sup is None:  # cancelled before run() read its fleet: read it now, or say why not
            try:
                saved = await sync_to_async(saved_fleet)(self.state)
                sup = Supervisor(Follow.from_dict(self.state, saved.fleet), log=self.log)
            except FleetError as exc:
                self.log.error("on_kill: cannot delete this task's pods: %s", exc)
                return
        state = await self._task_state(sup, ON_KILL_STATE_TIMEOUT)
        if state == HANDED_OVER:
            self.log.warning("trigger cancelled here while the task is still deferred: handed "
                             "to another triggerer, which follows the pod; not deleting it")
            return
        deleted = await sup.delete_all(grace=0)
        self.log.info("on_kill (task %s) deleted %s", state or "state unknown",
                      ", ".join(deleted) or "no pod")


_pause = asyncio.sleep  # between reads of a fleet that cannot be used yet (tests replace it)
_deciding: set[asyncio.Task[None]] = set()  # on_kill decisions under way (kept referenced)


def _without_lost_orphans(state: Follow, log: Any) -> Follow:
    """Left-over pods on clusters the fleet dropped cannot be deleted from here: say so once
    (with what to do) rather than fail the task over them."""
    lost = state.lost_orphans()
    for o in lost:
        log.warning("left-over pod %s in %s on cluster %s is not deleted: the fleet no longer "
                    "has that cluster (delete it there)", o.pod, o.namespace, o.cluster)
    return replace(state, orphans=tuple(o for o in state.orphans if o not in lost))


async def _end(*tasks: asyncio.Task[Any]) -> None:
    """Cancel and wait until done, even when cancelled meanwhile (Airflow 3.3 repeats a
    trigger's cancel every second until it has ended); then re-raise that cancel as it came
    (its message tells Airflow to call on_kill)."""
    ending = asyncio.ensure_future(_cancel_until_done(tasks))
    caught: asyncio.CancelledError | None = None
    while not ending.done():
        try:
            await asyncio.shield(ending)
        except asyncio.CancelledError as exc:
            caught = exc
    if caught is not None:
        raise caught
    ending.result()


async def _cancel_until_done(tasks: tuple[asyncio.Task[Any], ...]) -> None:
    """Repeated: on Python < 3.12 `asyncio.wait_for` drops a cancel that arrives as its inner
    call completes, and a follower that survived would place the work again after on_kill
    deleted it."""
    while pending := [t for t in tasks if not t.done()]:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=0.5)
