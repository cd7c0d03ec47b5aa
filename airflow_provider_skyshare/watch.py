"""One shared watch per (cluster, namespace) for all the pods a process follows.

A triggerer following 500 tasks keeps one list+watch stream per cluster instead of 500
polls every few seconds. The hub keeps a cache of the provider's pods, resumes from the
last resourceVersion, relists on 410 Gone (reporting pods that vanished meanwhile), and
tells subscribers when the cluster becomes unreachable or comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

from airflow_provider_skyshare import kube
from airflow_provider_skyshare.fleet import Cluster
from airflow_provider_skyshare.names import MANAGED_SELECTOR

log = logging.getLogger(__name__)
SELECTOR = MANAGED_SELECTOR
LINGER_SECONDS = 30.0


class Change(str, enum.Enum):
    """What a subscriber hears of its pod."""

    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"
    SYNC = "SYNC"  # after every (re)list: the pod as listed, or None when it is not there
    UNREACHABLE = "UNREACHABLE"  # the stream broke; detail says why
    RECONNECTED = "RECONNECTED"
    BROKEN = "BROKEN"  # the hub itself failed (a bug): its followers must fail, not move


# (change, pod-or-None, detail): ADDED/MODIFIED/DELETED carry the pod; SYNC the pod or None
# (not in a fresh list, so gone); UNREACHABLE/RECONNECTED carry the reason in detail.
Event = tuple[Change, "dict[str, Any] | None", str]


class PodSource(Protocol):
    """The two calls a hub makes; replaceable so the relist after 410 is unit-tested."""

    async def list(self, cluster: Cluster, namespace: str) -> dict[str, Any]: ...

    def watch(self, cluster: Cluster, namespace: str,
              resource_version: str) -> AsyncIterator[dict[str, Any]]: ...


class KubeSource:
    async def list(self, cluster: Cluster, namespace: str) -> dict[str, Any]:
        return await kube.list_pods(cluster, namespace, labelSelector=SELECTOR)

    def watch(self, cluster: Cluster, namespace: str,
              resource_version: str) -> AsyncIterator[dict[str, Any]]:
        return kube.watch_pods(cluster, namespace, SELECTOR, resource_version, 60)


class PodWatchHub:
    def __init__(self, cluster: Cluster, namespace: str,
                 source: PodSource | None = None) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.source: PodSource = source or KubeSource()
        self.cache: dict[str, dict[str, Any]] = {}
        self.subscribers: dict[str, set[asyncio.Queue[Event]]] = {}
        self.connected = False
        self.error = ""
        self.requests = 0  # list + watch calls made (benchmark figure)
        self._task: asyncio.Task[None] | None = None
        self._idle_since: float | None = None
        self._synced = asyncio.Event()  # the cache reflects a list (and the watch since)
        self._failed = asyncio.Event()  # the last list or watch failed (until a list works)

    def subscribe(self, pod: str) -> asyncio.Queue[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self.subscribers.setdefault(pod, set()).add(queue)
        self._idle_since = None
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        elif pod in self.cache:
            queue.put_nowait((Change.SYNC, self.cache[pod], ""))
        if not self.connected and self.error:
            queue.put_nowait((Change.UNREACHABLE, None, self.error))
        return queue

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    async def snapshot(self, timeout: float) -> dict[str, dict[str, Any]] | None:
        """The provider's pods in this namespace, from the shared cache (starting the watch if
        needed): a triggerer resuming 5,000 tasks makes one list, not 5,000. None when the
        cluster did not answer (`error` says why) or not within the timeout."""
        if self._task is None or self._task.done():
            if not self.subscribers:
                self._idle_since = time.monotonic()  # linger, then stop, if nobody subscribes
            self._failed.clear()  # a stopped hub's last failure says nothing of the cluster now
            self.error = ""
            self._task = asyncio.get_running_loop().create_task(self._run())
        task = self._task
        waits = [asyncio.ensure_future(e.wait()) for e in (self._synced, self._failed)]
        try:
            await asyncio.wait([*waits, task], timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise RuntimeError(f"the shared watch of {self.cluster.name}/{self.namespace} "
                               f"failed: {task.exception()!r}") from task.exception()
        return dict(self.cache) if self._synced.is_set() else None

    def unsubscribe(self, pod: str, queue: asyncio.Queue[Event]) -> None:
        subs = self.subscribers.get(pod)
        if subs:
            subs.discard(queue)
            if not subs:
                del self.subscribers[pod]
        if not self.subscribers:
            self._idle_since = time.monotonic()

    def _emit(self, pod: str, event: Event) -> None:
        for queue in self.subscribers.get(pod, ()):
            queue.put_nowait(event)

    def _broadcast(self, kind: Change, detail: str) -> None:
        for name in list(self.subscribers):
            self._emit(name, (kind, None, detail))

    def _idle(self) -> bool:
        return (
            not self.subscribers
            and self._idle_since is not None
            and time.monotonic() - self._idle_since > LINGER_SECONDS
        )

    async def _run(self) -> None:
        try:
            await self._loop()
        except Exception as exc:  # a bug, not a cluster down: tell everyone, then fail
            log.exception("watch of %s/%s failed", self.cluster.name, self.namespace)
            self._broadcast(Change.BROKEN, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            self._synced.clear()  # a stopped hub's cache goes stale

    async def _loop(self) -> None:
        backoff = 0.1
        while not self._idle():
            try:
                rv = await self._relist()
                backoff = 0.1
                await self._watch(rv)
            except kube.KubeError as exc:
                if exc.status == 410:
                    continue  # too old: relist
                if self.connected or not self.error:
                    log.warning("watch of %s/%s lost: %s", self.cluster.name, self.namespace, exc)
                self.connected = False
                self._synced.clear()
                self._failed.set()
                self.error = exc.message if exc.unreachable else str(exc)
                self._broadcast(Change.UNREACHABLE, self.error)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _relist(self) -> str:
        self.requests += 1
        listing = await self.source.list(self.cluster, self.namespace)
        fresh = {p["metadata"]["name"]: p for p in listing.get("items") or []}
        was_connected = self.connected or not self.error
        self.cache = fresh
        self.connected, self.error = True, ""
        self._failed.clear()
        self._synced.set()
        if not was_connected:
            self._broadcast(Change.RECONNECTED, "")
        for name in list(self.subscribers):
            self._emit(name, (Change.SYNC, fresh.get(name), ""))
        return listing["metadata"]["resourceVersion"]

    async def _watch(self, rv: str) -> None:
        while not self._idle():
            self.requests += 1
            async for event in self.source.watch(self.cluster, self.namespace, rv):
                kind = event.get("type")
                obj = event.get("object") or {}
                if kind == "ERROR":
                    raise kube.KubeError(self.cluster.name, int(obj.get("code", 500)),
                                         obj.get("reason", ""), obj.get("message", ""))
                rv = (obj.get("metadata") or {}).get("resourceVersion", rv)
                if kind == "BOOKMARK":
                    continue
                name = obj["metadata"]["name"]
                if kind == Change.DELETED:
                    self.cache.pop(name, None)
                else:
                    self.cache[name] = obj
                self._emit(name, (Change(kind), obj, ""))

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


_hubs: dict[tuple, PodWatchHub] = {}


def hub(cluster: Cluster, namespace: str) -> PodWatchHub:
    """The shared hub of the running event loop for this cluster and namespace."""
    key = (id(asyncio.get_running_loop()), cluster.name, namespace)
    found = _hubs.get(key)
    if found is None or found.cluster != cluster:
        found = _hubs[key] = PodWatchHub(cluster, namespace)
    return found


async def close_hubs() -> None:
    loop_id = id(asyncio.get_running_loop())
    for key in [k for k in _hubs if k[0] == loop_id]:
        await _hubs.pop(key).close()


def request_count() -> int:
    return sum(h.requests for h in _hubs.values())


def subscriptions() -> int:
    """Pods followed through the hubs (of every loop): the benchmarks' count of triggers
    that have reached their steady state."""
    return sum(len(h.subscribers) for h in _hubs.values())
