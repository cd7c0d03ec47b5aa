"""Live logs on the real sandbox (issue 16): the running attempt's container log streams into
the follower's log, marked with attempt and cluster; a preemption moves the work and the next
attempt's stream starts on its cluster; an apiserver restart resumes the stream at sinceTime
without repeating a line.

The container log is served for real: API server -> the node's kubelet endpoint (KWOK) -> the
cluster's container log file, which ``sandbox.write_log`` appends to while the pod runs.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest

from airflow_provider_skyshare import finish
from airflow_provider_skyshare.logstream import LiveLogs
from tests.helpers.fixtures import wait_for
from tests.integration.test_reliability import closing, make, pods_of, running, wait_kueue_admits

pytestmark = pytest.mark.integration


def test_the_running_attempts_log_streams_marked_and_a_move_streams_the_next(
        sandbox, admin, kube_env, no_leaks, caplog):
    caplog.set_level(logging.INFO, logger="live")
    token = uuid.uuid4().hex[:8]
    blocker = make("blocker", duration="600s")
    # long enough a grace that the apiserver restart below does not move the work
    task = make("live", duration="600s", log=logging.getLogger("live"), unreachable_grace=120)
    task.sup.live = LiveLogs(task.sup.job.fleet, ("base",), task.sup.log)
    owner = make("owner", org="bair", user="abbeel", duration="600s")

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.name == "live" and r.getMessage().startswith("[attempt ")]

    def shown(line: str, what: str) -> None:
        wait_for(lambda: line in lines(), 60, what)

    async def scenario() -> None:
        await blocker.start()  # rise full: the task borrows bair
        assert (await task.start()).cluster == "bair"
        following = asyncio.create_task(task.sup.follow())
        try:
            await moved_and_restarted()
        finally:  # its streams end with it, before the clients close
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)

    async def moved_and_restarted() -> None:
        await asyncio.to_thread(wait_for, lambda: running(admin, "bair", task), 60, "attempt 1")
        await asyncio.to_thread(sandbox.write_log, "bair", f"epoch 1 {token}")
        await asyncio.to_thread(shown, f"[attempt 1 on bair] epoch 1 {token}", "attempt 1's line")
        assert running(admin, "bair", task), "seen while the pod runs"
        await blocker.delete_all(0)
        await asyncio.to_thread(wait_for, lambda: not pods_of(admin, "rise", blocker), 60,
                                "rise free")
        await owner.start()  # bair's owner preempts the borrowed attempt: it moves to rise
        await asyncio.to_thread(wait_for, lambda: running(admin, "rise", task), 90, "attempt 2")
        await asyncio.to_thread(sandbox.write_log, "rise", f"epoch 2 {token}")
        await asyncio.to_thread(shown, f"[attempt 2 on rise] epoch 2 {token}", "attempt 2's line")
        assert {(t.attempt, t.cluster) for t in task.sup.live.streaming} == {(2, "rise")}
        try:
            await asyncio.to_thread(sandbox.stop_component, "rise", "apiserver")
            await asyncio.to_thread(sandbox.write_log, "rise", f"while down {token}")
        finally:
            await asyncio.to_thread(sandbox.start_component, "rise", "apiserver")
        await asyncio.to_thread(sandbox.write_log, "rise", f"after restart {token}")
        await asyncio.to_thread(shown, f"[attempt 2 on rise] after restart {token}",
                                "the stream resumed after the apiserver restart")

    try:
        asyncio.run(closing(scenario()))
    finally:
        for driven in (owner, blocker, task):
            asyncio.run(closing(driven.delete_all(0)))
        wait_kueue_admits(admin, "rise")  # after the apiserver restart, as the next test needs
    mine = [line for line in lines() if token in line]
    assert mine == [f"[attempt 1 on bair] epoch 1 {token}", f"[attempt 2 on rise] epoch 2 {token}",
                    f"[attempt 2 on rise] while down {token}",
                    f"[attempt 2 on rise] after restart {token}"], mine
    assert task.sup.live.streaming == frozenset()  # the follow loop ended: its streams too


def test_the_final_log_prints_only_what_the_stream_did_not_show(
        sandbox, admin, kube_env, no_leaks, caplog):
    """The pod succeeds; the final log (get_logs) reads it once more, from where the stream
    got to: a line streamed while it ran is not printed again, a later one is."""
    caplog.set_level(logging.INFO, logger="final")
    token = uuid.uuid4().hex[:8]
    task = make("final", duration="6s", log=logging.getLogger("final"))
    task.sup.live = LiveLogs(task.sup.job.fleet, ("base",), task.sup.log)

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.name == "final" and token in r.getMessage()]

    async def scenario():
        await task.start()
        following = asyncio.create_task(task.sup.follow())
        await asyncio.to_thread(wait_for, lambda: running(admin, "rise", task), 60, "attempt 1")
        await asyncio.to_thread(sandbox.write_log, "rise", f"while running {token}")
        await asyncio.to_thread(wait_for, lambda: lines(), 30, "the streamed line")
        state = await following
        await asyncio.to_thread(sandbox.write_log, "rise", f"after the stream {token}")
        await finish.finish(state, state.verdict, finish.FinishPolicy(), task.sup.log,
                            task.sup.logs_shown(state))
        return state

    state = asyncio.run(closing(scenario()))
    assert state.verdict.status.value == "success"
    assert lines() == [f"[attempt 1 on rise] while running {token}",
                       f"[attempt 1 on rise] after the stream {token}"], lines()
