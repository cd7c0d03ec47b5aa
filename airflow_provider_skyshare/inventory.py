"""Live capacity for a long-lived follower (the triggerer): each cluster's nodes and the
non-terminal pods that ask for GPUs, kept by one list+watch each (the informer pattern).

A storm of moves in one triggerer probed every cluster once per round of placements: a list
of every node and of every non-terminal pod, hundreds of milliseconds on a busy cluster, and
the moves queued behind the rounds (benchmark (g): p50 1.2 s, p95 2.8 s for 200 moves). From
a live inventory a placement's snapshot costs no request and no wait.

It is as fresh as its watches: a change arrives within milliseconds. An inventory that is not
in step (starting, its stream broken, relisting after 410 Gone) is not used: the probe lists,
as a worker's always does. The tier policy (two reads) is read again after POLICY_TTL. Only
pods that ask for GPUs are kept, so memory follows the GPU work, not the cluster's size.

The triggerer turns it on for its event loop (`keep_live`); elsewhere nothing changes.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from airflow_provider_skyshare import kube
from airflow_provider_skyshare.fleet import Cluster
from airflow_provider_skyshare.snapshot import TERMINAL_PHASES, gpus_requested

log = logging.getLogger(__name__)

NON_TERMINAL = "status.phase!=Succeeded,status.phase!=Failed"
WATCH_SECONDS = 300  # one watch request per collection per this long, in steady state
LIST_TIMEOUT = 30.0
POLICY_TTL = 60.0  # a cluster that stops enforcing the tier policy is refused this late
IDLE_SECONDS = 900.0  # no placement asked for this long: stop watching the cluster


class Source(Protocol):
    """The two calls a mirror makes; replaceable so relists and breaks are unit-tested."""

    async def list(self, cluster: Cluster, path: str,
                   query: dict[str, str]) -> dict[str, Any]: ...

    def watch(self, cluster: Cluster, path: str, query: dict[str, str],
              resource_version: str) -> AsyncIterator[dict[str, Any]]: ...


class KubeSource:
    async def list(self, cluster: Cluster, path: str,
                   query: dict[str, str]) -> dict[str, Any]:
        return await kube.request(cluster, "GET", path, query=query, timeout=LIST_TIMEOUT)

    def watch(self, cluster: Cluster, path: str, query: dict[str, str],
              resource_version: str) -> AsyncIterator[dict[str, Any]]:
        return kube.watch_path(cluster, path, query, resource_version, WATCH_SECONDS)


class Mirror:
    """One collection of one cluster, kept in memory: `items` by uid, `synced` while the
    cache reflects a list and every watch event since."""

    def __init__(self, cluster: Cluster, path: str, query: dict[str, str],
                 keep: Callable[[dict[str, Any]], bool], source: Source) -> None:
        self.cluster, self.path, self.query, self.keep = cluster, path, query, keep
        self.source = source
        self.items: dict[str, dict[str, Any]] = {}
        self.synced = False
        self.error = ""
        self.refused = ""  # why the credential may not watch (then the mirror stops)

    async def run(self, idle: Callable[[], bool]) -> None:
        """List, then watch from there, until `idle` says stop. A broken stream or a
        refusal unsyncs the mirror (it is not used meanwhile), then it lists again. However
        it ends (idle, cancelled, a bug), it is not used afterwards."""
        backoff = 0.1
        try:
            while not idle():
                try:
                    rv = await self._relist()
                    backoff = 0.1
                    while not idle():
                        rv = await self._watch(rv)
                except kube.KubeError as exc:
                    self.synced = False
                    if exc.status == 410:
                        continue  # too old to resume: list again
                    if exc.status == 403:  # a credential without list/watch: not retried
                        self.refused = exc.message
                        log.warning("capacity of %s is listed for each placement: its "
                                    "credential may not list and watch %s (%s). Fix: grant "
                                    "it the reader role of `skyshare manifests`",
                                    self.cluster.name, self.path, exc.message)
                        return
                    if exc.message != self.error:
                        log.warning("capacity watch of %s %s: %s", self.cluster.name,
                                    self.path, exc)
                    self.error = exc.message
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
        finally:
            self.synced = False

    async def _relist(self) -> str:
        listing = await self.source.list(self.cluster, self.path, self.query)
        self.items = {o["metadata"]["uid"]: o for o in listing.get("items") or []
                      if self.keep(o)}
        self.synced, self.error = True, ""
        return listing["metadata"]["resourceVersion"]

    async def _watch(self, rv: str) -> str:
        """One watch request; the resourceVersion to resume from when the server ends it."""
        async for event in self.source.watch(self.cluster, self.path, self.query, rv):
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                raise kube.KubeError(self.cluster.name, int(obj.get("code", 500)),
                                     obj.get("reason", ""), obj.get("message", ""))
            meta = obj.get("metadata") or {}
            rv = meta.get("resourceVersion", rv)
            if kind == "BOOKMARK":
                continue
            if kind == "DELETED" or not self.keep(obj):  # e.g. a pod that has ended
                self.items.pop(meta["uid"], None)
            else:
                self.items[meta["uid"]] = obj
        return rv


def _holds_gpus(pod: dict[str, Any]) -> bool:
    """Not ended, and asks for GPUs. (The watch's field selector also drops ended pods, as
    a DELETED event; this keeps the cache right should one come as MODIFIED.)"""
    phase = (pod.get("status") or {}).get("phase")
    return phase not in TERMINAL_PHASES and gpus_requested(pod) > 0


class Inventory:
    """A cluster's GPU-relevant nodes and pods, seen through its own (reader) credential."""

    def __init__(self, cluster: Cluster, source: Source | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        source = source or KubeSource()
        self.cluster, self.clock = cluster, clock
        self.nodes = Mirror(cluster, "/api/v1/nodes", {}, lambda _: True, source)
        self.pods = Mirror(cluster, "/api/v1/pods", {"fieldSelector": NON_TERMINAL},
                           _holds_gpus, source)
        self.used_at = clock()
        self._policy: tuple[float, str | None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def synced(self) -> bool:
        return self.nodes.synced and self.pods.synced

    def start(self) -> None:
        self.loop = loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(m.run(self.idle)) for m in (self.nodes, self.pods)]
        for task in self._tasks:
            task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A bug in a watch fails it loudly in the log (probes then list, as a worker's)."""
        if not task.cancelled() and task.exception() is not None:
            log.error("capacity watch of %s failed", self.cluster.name,
                      exc_info=task.exception())

    def idle(self) -> bool:
        return self.clock() - self.used_at > IDLE_SECONDS

    @property
    def refused(self) -> bool:
        return bool(self.nodes.refused or self.pods.refused)

    @property
    def running(self) -> bool:
        """Both watches alive (one that died of a bug takes its inventory out of use)."""
        return bool(self._tasks) and all(not t.done() for t in self._tasks)

    async def policy(self, read: Callable[[], Awaitable[str | None]]) -> str | None:
        """The tier policy's problem (None: enforced), read again once POLICY_TTL old; a
        failed read raises and is not remembered."""
        now = self.clock()
        if self._policy is None or now - self._policy[0] > POLICY_TTL:
            self._policy = (now, await read())
        return self._policy[1]

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def close(self) -> None:
        self.stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)


_live: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
_inventories: dict[tuple, Inventory] = {}


def keep_live() -> None:
    """This event loop follows tasks for long (a triggerer): probes read live inventories."""
    _live.add(asyncio.get_running_loop())


def of(cluster: Cluster) -> Inventory | None:
    """The running loop's inventory of `cluster` (a reader view), started on first use;
    None where the loop does not keep live inventories."""
    loop = asyncio.get_running_loop()
    if loop not in _live:
        return None
    key = (id(loop), cluster.name, cluster.context, cluster.kubeconfig, cluster.connection_id)
    found = _inventories.get(key)
    if found is not None and found.refused and found.cluster == cluster:
        return None  # this process lists the cluster for each placement (logged once)
    if found is not None and (not found.running or found.cluster != cluster
                              or found.loop is not loop):  # a dead loop's id can be reused
        if found.loop is loop:  # idle, a watch's bug, or the fleet changed the cluster
            found.stop()
        found = None
    if found is None:
        for k in [k for k, inv in _inventories.items()
                  if not inv.running or inv.loop is None or inv.loop.is_closed()]:
            del _inventories[k]  # stopped, or of a loop that has ended
        found = _inventories[key] = Inventory(cluster)
        found.start()
    found.used_at = found.clock()
    return found
