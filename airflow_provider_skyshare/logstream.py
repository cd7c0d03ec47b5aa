"""Live logs: the current attempt's container log, streamed into the task log while it runs.

Pure: which containers of which attempt stream now (``targets``), how a line is marked with
its attempt and cluster (``Target.mark``), where a reconnect resumes and which of the lines
it sends again were shown already (``Resume``). Shell: ``LiveLogs`` runs one side task per
streamed container (``follow=true&timestamps=true``, ``sinceTime`` after a reconnect); the
supervisor syncs it after every step, so a move ends the old attempt's stream and starts the
next one's. A stream never blocks or fails the follow loop: it is cancelled on a move or a
verdict, and what goes wrong in it is logged once.

``sinceTime`` has whole seconds (the API server passes it on to the kubelet as RFC 3339), so a
reconnect sends again the lines of the last shown line's second: ``Resume`` drops those up to
and including the last one shown, by their nanosecond timestamps.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from airflow_provider_skyshare import clients, kube
from airflow_provider_skyshare.fleet import Cluster, Fleet
from airflow_provider_skyshare.follow import Follow, Phase
from airflow_provider_skyshare.names import BASE_CONTAINER

# KubernetesPodOperator's container_logs: True (every container), or these containers' names
ContainerLogs = bool | tuple[str, ...]
FIRST_RETRY_SECONDS = 0.5  # a stream that ended or failed is opened again after this,
MAX_RETRY_SECONDS = 5.0  # doubling up to this (a finished container's stream ends at once)
# A stream quiet this long (an idle timeout, not a total one) is opened again (with
# sinceTime): a connection the network lost without a word would otherwise hang until the
# verdict. A busy stream is never cut.
STREAM_SECONDS = 300.0
QUOTED_CHARS = 200  # a server's word quoted in a warning is cut to this
STOP_SECONDS = 2.0  # stop() waits this long for cancelled streams to close their connections
NANOS = 1_000_000_000


def container_logs(value: Iterable[str] | str | bool | None) -> ContainerLogs:
    """KubernetesPodOperator's argument, normalised: None means the base container."""
    if value is None:
        return (BASE_CONTAINER,)
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return (value,)
    return tuple(value)


@dataclass(frozen=True)
class Target:
    """One container log of one attempt."""

    cluster: str
    namespace: str
    pod: str
    attempt: int
    container: str = BASE_CONTAINER

    def mark(self, text: str) -> str:
        """``[attempt 2 on bair] text``; another container than base is named, as KPO does."""
        where = f"[attempt {self.attempt} on {self.cluster}]"
        return f"{where} {text}" if self.container == BASE_CONTAINER else \
            f"{where} [{self.container}] {text}"


def containers(pod: dict[str, Any] | None, wanted: ContainerLogs) -> tuple[str, ...]:
    """The containers of ``wanted`` the pod (or its template) has; all of them for True."""
    names = tuple(c.get("name", "") for c in ((pod or {}).get("spec") or {}).get("containers")
                  or ())
    if wanted is True:
        return names or (BASE_CONTAINER,)
    if wanted is False:
        return ()
    return tuple(n for n in wanted if not names or n in names)


def current(state: Follow, wanted: ContainerLogs) -> tuple[Target, ...]:
    """The newest attempt's containers, whatever the phase (the final log's)."""
    last = state.timeline.last
    if last is None:
        return ()
    return tuple(Target(last.cluster, last.namespace, last.pod, last.number, c)
                 for c in containers(state.pod or state.job.template, wanted))


def targets(state: Follow, wanted: ContainerLogs) -> frozenset[Target]:
    """What streams now: the newest attempt once it runs, while it is watched or drained (a
    preempted container may still write its checkpoint); nothing while placing or done."""
    last = state.timeline.last
    running = last is not None and last.started_at is not None and not state.pod_gone
    if state.phase is Phase.DRAINING or (state.phase is Phase.WATCHING and running):
        return frozenset(current(state, wanted))
    return frozenset()


_STAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")


def instant(text: str) -> int | None:
    """An RFC 3339 timestamp (nanoseconds, any offset) as nanoseconds since the epoch."""
    m = _STAMP.match(text)
    if m is None:
        return None
    zone = "+00:00" if m[3] == "Z" else m[3]
    seconds = int(datetime.fromisoformat(m[1] + zone).timestamp())
    return seconds * NANOS + int((m[2] or "0").ljust(9, "0"))


def split(line: str) -> tuple[int | None, str]:
    """A ``timestamps=true`` log line: its instant and its text. None: no timestamp, so not
    the container's: the server's own word, written into a stream it could not go on with
    (KWOK: ``failed to create fsnotify watcher: too many open files``)."""
    stamp, sep, text = line.rstrip("\r\n").partition(" ")
    at = instant(stamp) if sep else None
    return (at, text) if at is not None else (None, line.rstrip("\r\n"))


@dataclass(frozen=True)
class Resume:
    """Where a container's log was shown up to: the last shown line's instant and how many
    lines had exactly it; ``replaying`` while a reconnect sends again what was shown."""

    last: int | None = None
    at_last: int = 0
    replaying: bool = False
    skip: int = 0  # lines at ``last`` the replay has still to pass over

    def since_time(self) -> str | None:
        """The reconnect's ``sinceTime``: the last shown line's second (whole seconds)."""
        if self.last is None:
            return None
        return datetime.fromtimestamp(self.last // NANOS, timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%SZ")

    def reconnected(self) -> Resume:
        return replace(self, replaying=self.last is not None, skip=self.at_last)

    def admit(self, at: int | None) -> tuple[bool, Resume]:
        """Show this line? Not one without a timestamp (not the container's)."""
        if at is None:
            return False, self
        if self.last is not None and at < self.last:  # replayed, or out of order: shown
            return not self.replaying, self  # then, but never moves the resume point back
        if self.replaying and at == self.last and self.skip:
            return False, replace(self, skip=self.skip - 1)
        at_last = self.at_last + 1 if at == self.last else 1
        return True, Resume(last=at, at_last=at_last)


def fresh(lines: Iterable[str], resume: Resume) -> tuple[list[str], Resume]:
    """The texts of ``lines`` not shown yet, and where they get the log to."""
    texts = []
    for line in lines:
        at, text = split(line)
        show, resume = resume.admit(at)
        if show:
            texts.append(text)
    return texts, resume


def quoted(text: str) -> str:
    """Text for a warning, cut short: a server's word can be a megabyte of anything."""
    return text if len(text) <= QUOTED_CHARS else text[:QUOTED_CHARS] + "..."


def shown_to_dict(shown: dict[str, Resume]) -> dict[str, list[int]]:
    """Per container, where the stream got to (the end event carries it to the worker)."""
    return {c: [r.last, r.at_last] for c, r in shown.items() if r.last is not None}


def shown_from_dict(data: dict[str, Any] | None) -> dict[str, Resume]:
    return {c: Resume(int(v[0]), int(v[1])) for c, v in (data or {}).items()}


# -- the shell -----------------------------------------------------------------------------
Reader = Callable[[Cluster, str, str, str, str | None], AsyncIterator[str]]


async def read_stream(cluster: Cluster, namespace: str, pod: str, container: str,
                      since_time: str | None) -> AsyncIterator[str]:
    async for line in kube.stream_log(cluster, namespace, pod, container, since_time=since_time,
                                      timeout=STREAM_SECONDS):
        yield line


class LiveLogs:
    """The side tasks that stream the current attempt's container logs into ``log``."""

    def __init__(self, fleet: Fleet, wanted: ContainerLogs, log: logging.Logger,
                 read: Reader = read_stream) -> None:
        self.fleet, self.wanted, self.log, self.read = fleet, wanted, log, read
        self._tasks: dict[Target, asyncio.Task[None]] = {}
        self._shown: dict[Target, Resume] = {}

    def sync(self, state: Follow) -> None:
        """Start what should stream now and cancel the rest; never waits."""
        want = targets(state, self.wanted)
        for target in [t for t in self._tasks if t not in want]:
            self._tasks.pop(target).cancel()
        for target in want - self._tasks.keys():
            task = asyncio.create_task(self._stream(target), name=f"live log {target.pod}")
            task.add_done_callback(self._ended)
            self._tasks[target] = task

    @property
    def streaming(self) -> frozenset[Target]:
        """The container logs streaming now."""
        return frozenset(t for t, task in self._tasks.items() if not task.done())

    async def stop(self) -> None:
        """Cancel every stream and let them close their connections (bounded)."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_SECONDS)

    def shown(self, state: Follow) -> dict[str, Resume]:
        """Per container of the newest attempt, how far its log was shown."""
        return {t.container: self._shown[t] for t in current(state, self.wanted)
                if t in self._shown}

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:  # a bug: say it, once
            self.log.error("live log stream failed", exc_info=task.exception())

    async def _stream(self, target: Target) -> None:
        """Open, show, open again after a pause (doubling while nothing new comes): a
        finished container's stream ends at once, a failing one keeps failing."""
        cluster = self.fleet.clusters[target.cluster]
        delay, said = FIRST_RETRY_SECONDS, ""
        while True:
            self._shown[target] = self._shown.get(target, Resume()).reconnected()
            before, trouble = self._shown[target], ""
            try:
                async for line in self.read(cluster, target.namespace, target.pod,
                                            target.container, before.since_time()):
                    trouble = self._show(target, line) or trouble
            except (kube.KubeError, clients.ClusterConfigError) as exc:
                trouble = str(exc)
            if self._shown[target].last != before.last:
                delay = FIRST_RETRY_SECONDS
            if trouble and trouble != said:  # the same trouble again is not news
                self.log.warning("live log of %s (%s) on %s: %s; trying again until the "
                                 "attempt ends", target.pod, target.container, target.cluster,
                                 quoted(trouble))
                said = trouble
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_SECONDS)

    def _show(self, target: Target, line: str) -> str:
        """Log the line if it is new; return it if it is not the container's (an error)."""
        at, text = split(line)
        show, self._shown[target] = self._shown[target].admit(at)
        if show:
            self.log.info("%s", target.mark(text))
        return text if at is None and text.strip() else ""
