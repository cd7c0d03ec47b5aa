"""The shell around ``follow.step``: feeds it events, executes its actions, nothing else.

The same loop runs in the triggerer (deferrable) and in the worker (``deferrable=False``).
Every decision is ``follow``'s; here are the waiting (the pod's watch, or a timer), the I/O
of each action through a ``ClusterApi`` (real or, in unit tests, recorded), and the log line
of each decision. Results of actions are fed back before anything new is awaited, so a
step always sees the answer to what it asked for first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace

from airflow_provider_skyshare import pods, taskpods
from airflow_provider_skyshare.claims import KILLED, follower_id
from airflow_provider_skyshare.cluster_api import ClusterApi, KubeClusterApi, PodFeed
from airflow_provider_skyshare.follow import (
    Action,
    Claim,
    Create,
    Delete,
    Deleted,
    Event,
    Finish,
    Follow,
    Inquire,
    Inquired,
    Job,
    NamePreemptor,
    Note,
    Orphan,
    Phase,
    PodGone,
    PodSeen,
    PreemptorNamed,
    Probe,
    Probed,
    ReadBack,
    ReadBackAnswer,
    Recheck,
    Start,
    Tick,
    Unreachable,
    Watch,
    first_probe,
    step,
)
from airflow_provider_skyshare.logstream import ContainerLogs, LiveLogs, Resume

SWEEP_WAIT_SECONDS = 5.0  # a worker waits this long for the tombstone sweep, then defers


async def _within(task: asyncio.Task[int], seconds: float, log: logging.Logger) -> None:
    """Wait for a side task a bounded time; cancelled past it (it is only housekeeping)."""
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if done:
        task.result()  # a bug in it fails loudly
        return
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    log.info("tombstone sweep cut after %.0fs: the next task's worker sweeps again", seconds)


def _nothing() -> None:
    return None


class Supervisor:
    def __init__(self, state: Follow, api: ClusterApi | None = None,
                 log: logging.Logger | None = None,
                 clock: Callable[[], float] = time.time, live_logs: ContainerLogs = ()) -> None:
        # who this follower is, on the claims it writes (never serialised: a copy is another)
        self.state = state if state.me else replace(state, me=follower_id())
        self.api: ClusterApi = api or KubeClusterApi(state.job.fleet, state.job.identity.key)
        self.log = log or logging.getLogger(__name__)
        self.clock = clock
        self._feed: PodFeed | None = None
        self._pending: deque[Event] = deque()
        # the current attempt's containers whose logs stream into ``log`` while it runs
        self.live = LiveLogs(state.job.fleet, live_logs, self.log) if live_logs else None

    @classmethod
    def for_job(cls, job: Job, log: logging.Logger | None = None,
                live_logs: ContainerLogs = ()) -> Supervisor:
        return cls(Follow(job), log=log, live_logs=live_logs)

    def logs_shown(self, state: Follow) -> dict[str, Resume]:
        """How far each container log of the newest attempt was streamed (finish prints
        the rest)."""
        return self.live.shown(state) if self.live is not None else {}

    @property
    def job(self) -> Job:
        return self.state.job

    # -- the loop ----------------------------------------------------------------------------
    async def run(self, until: Phase = Phase.DONE) -> Follow:
        """Step until the phase is reached (the worker places, then defers) or a verdict."""
        self._pending.append(Start())
        try:
            while not self._reached(until):
                event = self._pending.popleft() if self._pending else await self._wait()
                self.state, actions = step(self.state, event, self.clock())
                for action in actions:
                    if isinstance(action, Watch) and until is Phase.WATCHING:
                        continue  # placing only (the worker): the trigger will watch
                    await self._execute(action)
                if self.state.phase not in (Phase.WATCHING, Phase.DRAINING):
                    self._close_feed()
                if self.live is not None:
                    self.live.sync(self.state)  # a move ends one stream, starts the next
        finally:
            self._close_feed()
            self._pending.clear()
            if self.live is not None:
                await self.live.stop()
        return self.state

    def _reached(self, until: Phase) -> bool:
        phase = self.state.phase
        return phase is Phase.DONE or (until is Phase.WATCHING and phase is Phase.WATCHING)

    async def _wait(self) -> Event:
        """The pod's next event, or a Tick when the state's wake-up time comes first."""
        wake_at = self.state.wake_at
        timeout = None if wake_at is None else max(0.0, wake_at - self.clock())
        if self._feed is None:
            if timeout is None:
                raise RuntimeError(f"follow loop has nothing to wait for in {self.state.phase}")
            await asyncio.sleep(timeout)
            return Tick()
        return await self._feed.next(timeout) or Tick()

    async def _execute(self, action: Action) -> None:
        result: Event | None = None
        if isinstance(action, Note):
            self.log.log(action.level, "%s", action.text)
        elif isinstance(action, Probe):
            result = Probed(await self.api.probe(action.shared, action.clusters), action.shared,
                            action.clusters)
        elif isinstance(action, Create):
            result = await self._create(action)
        elif isinstance(action, Watch):
            self._close_feed()
            self._feed = await self._watch(action)
        elif isinstance(action, Recheck):
            result = await self.api.get(action.cluster, action.namespace, action.pod)
        elif isinstance(action, ReadBack):
            result = await self._read_back(action)
        elif isinstance(action, Claim):
            result = await self.api.claim(action)
        elif isinstance(action, Inquire):
            result = Inquired(await self.api.inquire(action.cluster, action.namespace,
                                                     action.pod, action.since))
        elif isinstance(action, Delete):
            result = Deleted(action.orphan, await self.api.delete(action.orphan))
        elif isinstance(action, NamePreemptor):
            # a preemptor that finished meanwhile is gone: its uid (from Kueue's message) is
            # still worth recording
            who = await self.api.name_preemptor(action.cluster, action.uid) or \
                f"pod uid {action.uid} (gone)"
            result = PreemptorNamed(action.attempt, f"{who} via {action.via}")
        elif not isinstance(action, Finish):  # Finish: the loop ends on the DONE phase
            raise TypeError(f"unknown action {action!r}")
        if result is not None:
            self._pending.append(result)

    # a gang (nodes > 1) is created, read back and watched as its members
    async def _create(self, action: Create) -> Event:
        if action.extra:
            return await self.api.create_gang(action.cluster, action.pod, action.extra)
        return await self.api.create(action.cluster, action.pod)

    async def _watch(self, action: Watch) -> PodFeed:
        if action.members:
            return await self.api.watch_gang(action.cluster, action.namespace, action.members)
        return await self.api.watch(action.cluster, action.namespace, action.pod)

    async def _read_back(self, action: ReadBack) -> ReadBackAnswer:
        found = await (self.api.get_gang(action.cluster, action.namespace, action.members)
                       if action.members else
                       self.api.get(action.cluster, action.namespace, action.pod))
        if not isinstance(found, PodSeen | PodGone | Unreachable):
            raise TypeError(f"a get answered {found!r}")
        return ReadBackAnswer(action.cluster, found, action.message)

    def _close_feed(self) -> None:
        if self._feed is not None:
            self._feed.close()
            self._feed = None

    # -- before the loop: what exists already --------------------------------------------------
    async def adopt_newest(self, shared: bool = True) -> bool:
        """Continue from this try's newest pod on any cluster when it is newer than the
        timeline (a worker retried after a crash, a trigger restarted after a move); True
        when it did."""
        newest = await taskpods.find_newest(self.job.fleet, self.job.identity, self.log,
                                            shared=shared)
        last = self.state.timeline.last
        if newest is None or (last is not None and pods.attempt_of(newest[1]) <= last.number):
            return False
        cluster, pod = newest
        timeline = pods.timeline_from_pod(cluster, pod, now=self.clock())
        adopted = timeline.last
        assert adopted is not None
        mine = {(cluster, name) for name in adopted.members or (adopted.pod,)}  # a gang: all
        carried = (Orphan(**o) for o in pods.orphans_of(pod))  # a crash lost none
        orphans: list[Orphan] = []
        for orphan in (*self.state.orphans, *carried):
            if orphan not in orphans and (orphan.cluster, orphan.pod) not in mine:
                orphans.append(orphan)
        self.state = Follow(self.job, timeline, tuple(orphans), me=self.state.me)
        self.log.info("found attempt %d of this task on %s (pod %s): following it",
                      adopted.number, cluster, adopted.pod)
        return True

    async def place(self) -> Follow:
        """Worker side, before deferring: delete earlier tries' pods, adopt or place. Old
        tombstones are swept afterwards, off the placement's path: its requests to every
        cluster would compete with the placement's (bounded: the task defers right after)."""
        fleet = self.job.fleet
        # A first try has no earlier pods to delete, so the capacity it sees cannot change
        # under the search: probe meanwhile. (A later try probes after its reaping.)
        early = (self.api.probing_early(first_probe(self.state).clusters)
                 if self.job.identity.try_number <= 1 else contextlib.nullcontext(_nothing))
        async with early as drop_early_probe:
            await taskpods.reap_earlier_tries(fleet, self.job.identity, self.log)
            if await self.adopt_newest(shared=False):  # no watch of every cluster
                drop_early_probe()  # it predates what adoption found
            state = await self.run(until=Phase.WATCHING)
        sweeping = asyncio.create_task(taskpods.sweep_tombstones(fleet, self.log,
                                                                 now=self.clock()))
        await _within(sweeping, SWEEP_WAIT_SECONDS, self.log)
        return state

    async def follow(self) -> Follow:
        """Trigger side (and deferrable=False after place): follow to a verdict."""
        await self.adopt_newest()
        return await self.run()

    async def delete_all(self, grace: int | None = None) -> list[str]:
        """The task was killed, marked or cleared: every pod of this try, each after its
        tombstone (a follower elsewhere must not replace it)."""
        tomb = taskpods.Tomb(KILLED, self.state.me, self.state.timeline, self.clock(),
                             retry_for=taskpods.KILL_RETRY_SECONDS)
        return await taskpods.delete_all(self.job.fleet, self.job.identity, self.log, tomb,
                                         grace)
