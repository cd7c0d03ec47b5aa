"""The clusters as the follow loop sees them: a small protocol, and its real implementation.

``supervisor.Supervisor`` executes ``follow``'s actions through a ``ClusterApi``; the real
one talks to Kubernetes (``kube``, the shared ``watch`` hub, ``capacity``), a fake one in
the unit tests replays recorded pods. Each call answers with the ``follow`` event that the
core reads; transport failures become events (a cluster that does not answer is a fact the
core decides about), while anything unexpected propagates and fails the trigger loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any, Protocol

from airflow_provider_skyshare import (
    capacity,
    claims,
    clients,
    evidence,
    gang,
    inventory,
    kube,
    watch,
)
from airflow_provider_skyshare.fleet import Fleet
from airflow_provider_skyshare.follow import (
    Claim,
    ClaimAnswer,
    ClaimResult,
    CreateAnswer,
    CreateConflict,
    Created,
    CreateFailed,
    Event,
    Orphan,
    PodGone,
    PodSeen,
    Reconnected,
    Unreachable,
)
from airflow_provider_skyshare.names import A_TASK, L_TASK_KEY
from airflow_provider_skyshare.outcomes import Outcome
from airflow_provider_skyshare.snapshot import Snapshot

REBALANCE_PROBE_AGE = 2.0  # queued tasks of one triggerer share a capacity probe this long
PREEMPTOR_LOOKUP_SECONDS = 5.0
CLAIM_TIMEOUT = 5.0  # one Lease call
EVENTS_TIMEOUT = 5.0  # one list of a pod's Events


class PodFeed(Protocol):
    """The events of one followed pod."""

    async def next(self, timeout: float | None) -> Event | None:
        """The next event, or None when ``timeout`` seconds pass without one."""

    def close(self) -> None: ...


class ClusterApi(Protocol):
    async def probe(self, shared: bool, clusters: tuple[str, ...] = ()) -> Snapshot: ...

    def probing_early(self, clusters: tuple[str, ...] = ()
                      ) -> contextlib.AbstractAsyncContextManager[Callable[[], None]]:
        """Within it, the next unshared probe of these clusters (() = every one) is already
        under way (started on entry; dropped on exit, or by calling what it yields, if
        nobody asked for it)."""

    async def create(self, cluster: str, pod: dict[str, Any]) -> Event: ...

    async def watch(self, cluster: str, namespace: str, pod: str) -> HubFeed: ...

    async def get(self, cluster: str, namespace: str, pod: str) -> Event: ...

    async def delete(self, orphan: Orphan) -> bool:
        """True when the pod is gone (deleted now or before); False: the cluster did not
        answer."""

    async def name_preemptor(self, cluster: str, uid: str) -> str: ...

    async def claim(self, action: Claim) -> ClaimAnswer:
        """Write the Lease of ``Claim``; 409 is read back as the other follower's claim."""

    async def inquire(self, cluster: str, namespace: str, pod: str,
                      since: float) -> Outcome | None:
        """How a pod that is gone ended, from its Events since ``since`` (None: they do not
        say, or no answer)."""

    # a gang (nodes > 1): its pods as one
    async def create_gang(self, cluster: str, leader: dict[str, Any],
                          rest: tuple[dict[str, Any], ...]) -> Event: ...

    async def get_gang(self, cluster: str, namespace: str, names: tuple[str, ...]) -> Event: ...

    async def watch_gang(self, cluster: str, namespace: str,
                         names: tuple[str, ...]) -> PodFeed: ...


class MissingPermission(RuntimeError):
    """The org's credential lacks a permission the provider needs: fail with the fix."""


def _missing(exc: kube.KubeError, what: str) -> Exception:
    if exc.status != 403:
        return exc
    return MissingPermission(
        f"cannot {what} on {exc.cluster}: {exc.message}. Apply the RBAC that `skyshare "
        f"manifests --cluster {exc.cluster}` prints (the org's Role grants leases and events "
        "in its namespace since this version)")


def _answer(exc: kube.KubeError) -> CreateAnswer:
    """No answer and 5xx may hide a stored pod; any 4xx (429 too) says it was not stored."""
    if exc.unreachable:
        return CreateAnswer.NONE
    return CreateAnswer.SERVER_ERROR if exc.status >= 500 else CreateAnswer.REFUSED


class WatchBroken(RuntimeError):
    """The shared watch failed with a bug: the task fails with it (never a move)."""


def feed_event(change: watch.Change, pod: dict[str, Any] | None, detail: str) -> Event | None:
    """A watch hub's event as the core reads it."""
    if change is watch.Change.BROKEN:
        raise WatchBroken(f"the shared pod watch failed: {detail}")
    if change is watch.Change.UNREACHABLE:
        return Unreachable(detail)
    if change is watch.Change.RECONNECTED:
        return Reconnected()
    if pod is None:
        return PodGone() if change is watch.Change.SYNC else None
    return PodSeen(pod, deleted=change is watch.Change.DELETED)


class HubFeed:
    """One pod's subscription to the shared watch of its cluster and namespace."""

    def __init__(self, hub: watch.PodWatchHub, pod: str) -> None:
        self.hub, self.pod = hub, pod
        self.queue = hub.subscribe(pod)
        self.first: list[Event] = []

    async def next(self, timeout: float | None) -> Event | None:
        if self.first:
            return self.first.pop(0)
        while True:
            try:
                change, pod, detail = await asyncio.wait_for(self.queue.get(), timeout)
            except asyncio.TimeoutError:
                return None
            event = feed_event(change, pod, detail)
            if event is not None:
                return event

    def close(self) -> None:
        self.hub.unsubscribe(self.pod, self.queue)


class GangFeed:
    """The members' subscriptions to the shared watch of their cluster and namespace, as one
    feed: one pump per member into one queue, in arrival order. A member's PodGone names it
    (follow keeps the members apart); a broken watch fails the reader, as for one pod, and so
    does any other error of a pump (a bug: the member would go unwatched, silently)."""

    def __init__(self, feeds: list[HubFeed]) -> None:
        self.feeds = feeds
        self.merged: asyncio.Queue[Event | Exception] = asyncio.Queue()
        for feed in feeds:  # what each member's feed has already (cache or get), rank order
            for event in feed.first:
                self.merged.put_nowait(_named(event, feed.pod))
            feed.first.clear()
        self.pumps = [asyncio.ensure_future(self._pump(feed)) for feed in feeds]

    async def _pump(self, feed: HubFeed) -> None:
        try:
            while True:
                event = await feed.next(None)
                if event is not None:
                    self.merged.put_nowait(_named(event, feed.pod))
        except Exception as exc:  # noqa: BLE001 -- not swallowed: next() raises it
            self.merged.put_nowait(exc)

    async def next(self, timeout: float | None) -> Event | None:
        try:
            item = await asyncio.wait_for(self.merged.get(), timeout)
        except asyncio.TimeoutError:
            return None
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        for pump in self.pumps:
            pump.cancel()
        for feed in self.feeds:
            feed.close()


def _named(event: Event, pod: str) -> Event:
    return PodGone(pod) if isinstance(event, PodGone) else event


class KubeClusterApi:
    """The real clusters of a fleet, for one task (its key guards every delete)."""

    def __init__(self, fleet: Fleet, task_key: str) -> None:
        self.fleet, self.task_key = fleet, task_key
        self._early: tuple[tuple[str, ...], asyncio.Future[Snapshot]] | None = None

    async def probe(self, shared: bool, clusters: tuple[str, ...] = ()) -> Snapshot:
        if shared:
            return await capacity.probe_shared(self.fleet, REBALANCE_PROBE_AGE)
        if self._early is not None and self._early[0] == clusters:
            early, self._early = self._early[1], None
            return await early
        self._drop_early()
        return await self._placing(clusters)

    def _placing(self, clusters: tuple[str, ...]) -> Awaitable[Snapshot]:
        fleet = self.fleet.only(clusters) if clusters else self.fleet
        return capacity.probe_after(fleet, capacity.probe_placing)

    @contextlib.asynccontextmanager
    async def probing_early(self, clusters: tuple[str, ...] = ()
                            ) -> AsyncIterator[Callable[[], None]]:
        """A worker's first placement probes while it looks for the task's pods on every
        cluster: two round trips to the fleet at once instead of one after the other."""
        early = asyncio.ensure_future(self._placing(clusters))
        self._early = (clusters, early)
        try:
            yield self._drop_early
        finally:
            self._drop_early()
            await asyncio.gather(early, return_exceptions=True)

    def _drop_early(self) -> None:
        """Not asked for (a pod was adopted instead): a later probe must be its own."""
        if self._early is not None:
            self._early[1].cancel()
            self._early = None

    async def _refusal(self, cluster: str) -> CreateFailed | None:
        """The chosen cluster's tier policy, checked before its create (placement probes
        leave it out): a cluster that does not enforce it is refused like a 4xx."""
        target = self.fleet.clusters[cluster]
        if not target.enforced:
            return None
        try:
            problem = await capacity.unenforced(target, self.fleet.policy.probe_timeout_seconds)
        except asyncio.TimeoutError:
            problem = "its tier policy could not be read in time"
        except kube.KubeError as exc:
            problem = f"its tier policy could not be read: {_said(exc)}"
        except clients.ClusterConfigError as exc:  # its own credential: say which, skip it
            problem = f"its tier policy could not be read: {exc}"
        return CreateFailed(cluster, CreateAnswer.REFUSED, problem) if problem else None

    async def create(self, cluster: str, pod: dict[str, Any]) -> Event:
        target = self.fleet.clusters[cluster]
        if refused := await self._refusal(cluster):
            return refused
        try:
            made = await kube.create_pod(target, pod)
            inventory.note_created(target.as_reader(), made)
            return Created(cluster)
        except kube.KubeError as exc:
            if exc.status != 409:
                return CreateFailed(cluster, _answer(exc), _said(exc))
        meta = pod["metadata"]
        try:
            return CreateConflict(cluster, await kube.get_pod(target, meta["namespace"],
                                                              meta["name"]))
        except kube.KubeError as exc:
            return CreateFailed(cluster, _answer(exc), f"after HTTP 409: {_said(exc)}")

    async def watch(self, cluster: str, namespace: str, pod: str) -> HubFeed:
        """Known to the shared watch: no request. Not (yet) in its cache: one get, since a
        pod created a moment ago may not have reached the watch."""
        hub = watch.hub(self.fleet.clusters[cluster], namespace)
        feed = HubFeed(hub, pod)
        cached = hub.cache.get(pod) if hub.synced else None
        try:
            feed.first.append(PodSeen(cached) if cached is not None
                              else await self.get(cluster, namespace, pod))
        except BaseException:  # cancelled, or a bug: no subscription left behind
            feed.close()
            raise
        return feed

    async def watch_gang(self, cluster: str, namespace: str,
                         names: tuple[str, ...]) -> PodFeed:
        """One subscription per member; when one cannot be made, those made are closed."""
        feeds: list[HubFeed] = []
        try:
            for name in names:
                feeds.append(await self.watch(cluster, namespace, name))
        except BaseException:
            for made in feeds:
                made.close()
            raise
        return GangFeed(feeds)

    async def get_gang(self, cluster: str, namespace: str, names: tuple[str, ...]) -> Event:
        """A gang read back: its leader when every member is there (the create made the
        whole gang), PodGone when one is not, Unreachable when one get had no answer."""
        found = [await self.get(cluster, namespace, name) for name in names]
        silent = next((f for f in found if isinstance(f, Unreachable)), None)
        if silent is not None:
            return silent
        return found[0] if all(isinstance(f, PodSeen) for f in found) else PodGone()

    async def create_gang(self, cluster: str, leader: dict[str, Any],
                          rest: tuple[dict[str, Any], ...]) -> Event:
        """The leader as one pod is created (its answer is the attempt's), then the Service,
        owned by the leader's pod so that it goes with it, then the other members. One that
        fails fails the gang (follow deletes what was made); 409 of this task's is kept."""
        first = await self.create(cluster, leader)
        made = first.existing if isinstance(first, CreateConflict) else None
        if isinstance(first, CreateFailed) or (isinstance(first, CreateConflict) and (
                made is None or _key_of(made) != self.task_key)):
            return first
        if made is None:
            made = await self.get(cluster, leader["metadata"]["namespace"],
                                  leader["metadata"]["name"])
            made = made.pod if isinstance(made, PodSeen) else None
        if made is None:
            return CreateFailed(cluster, CreateAnswer.NONE, "the gang's leader vanished")
        for body in rest:
            body = gang.owned_by(body, made) if body.get("kind") == "Service" else body
            failed = await self._create_member(cluster, body)
            if failed is not None:
                return failed
        return first

    async def _create_member(self, cluster: str, body: dict[str, Any]) -> CreateFailed | None:
        target, meta = self.fleet.clusters[cluster], body["metadata"]
        path = (kube.pods_path(meta["namespace"]) if body.get("kind") != "Service"
                else f"/api/v1/namespaces/{meta['namespace']}/services")
        try:
            made = await kube.request(target, "POST", path, body=body,
                                      query={"timeout": f"{kube.CREATE_SERVER_SECONDS}s"},
                                      timeout=kube.CREATE_SECONDS)
            inventory.note_created(target.as_reader(), made)  # a Service keeps no GPUs
            return None
        except kube.KubeError as exc:
            if exc.status == 409 and await self._ours(target, f"{path}/{meta['name']}"):
                return None
            return CreateFailed(cluster, _answer(exc), f"{body.get('kind')} {meta['name']}: "
                                                       f"{_said(exc)}")

    async def _ours(self, target: Any, path: str) -> bool:
        try:
            return _key_of(await kube.request(target, "GET", path)) == self.task_key
        except kube.KubeError:
            return False

    async def get(self, cluster: str, namespace: str, pod: str) -> Event:
        try:
            found = await kube.get_pod(self.fleet.clusters[cluster], namespace, pod)
        except kube.KubeError as exc:
            if not exc.no_answer:
                raise  # 403 and friends: a configuration fault, not a cluster down
            return Unreachable(str(exc))
        return PodGone() if found is None else PodSeen(found)

    async def delete(self, orphan: Orphan) -> bool:
        """Only a pod of this task, and only the object that was read (uid precondition):
        a name is deterministic, and another process may have made it since."""
        target = self.fleet.clusters[orphan.cluster]
        try:
            found = await kube.get_pod(target, orphan.namespace, orphan.pod)
            labels = ((found or {}).get("metadata") or {}).get("labels") or {}
            if found is None or labels.get(L_TASK_KEY) != self.task_key:
                return True
            return await kube.delete_pod(target, orphan.namespace, orphan.pod, 0,
                                         uid=found["metadata"]["uid"])
        except kube.KubeError as exc:
            if exc.no_answer:
                return False
            if exc.status == 409:  # the uid changed: not the pod we read; look again later
                return False
            raise

    async def claim(self, action: Claim) -> ClaimAnswer:
        return await _Claims(self.fleet).write(action)

    async def inquire(self, cluster: str, namespace: str, pod: str,
                      since: float) -> Outcome | None:
        try:
            listing = await kube.request_patient(
                self.fleet.clusters[cluster], "GET", f"/api/v1/namespaces/{namespace}/events",
                query={"fieldSelector": f"involvedObject.kind=Pod,involvedObject.name={pod}"},
                timeout=EVENTS_TIMEOUT)
        except kube.KubeError as exc:
            if exc.no_answer:
                return None
            raise _missing(exc, "read the pod's Events") from None
        return evidence.from_events(listing.get("items") or [], pod, since)

    async def name_preemptor(self, cluster: str, uid: str) -> str:
        """The preempting pod's task ('dag/task/run'), or 'pod ns/name'; '' if not found."""
        try:
            # every namespace: the cluster's own (reader) credential, never the org's
            listing = await kube.request(self.fleet.clusters[cluster].as_reader(), "GET",
                                         "/api/v1/pods",
                                         query={"resourceVersion": "0"},
                                         timeout=PREEMPTOR_LOOKUP_SECONDS)
        except kube.KubeError:
            return ""  # best effort: the move happened already
        for pod in listing.get("items") or []:
            meta = pod.get("metadata") or {}
            if meta.get("uid") == uid:
                return (meta.get("annotations") or {}).get(A_TASK) or (
                    f"pod {meta.get('namespace')}/{meta.get('name')}")
        return ""


class _Claims:
    """The Lease writes of ``Claim`` (see ``claims``), for KubeClusterApi."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    async def write(self, action: Claim) -> ClaimAnswer:
        answer = await (self._update(action) if action.held is not None
                        else self._create(action))
        return replace(answer, record=action.record)

    async def _create(self, action: Claim) -> ClaimAnswer:
        silent: list[str] = []
        for name in action.fences:  # the first fence cluster that answers holds the claim
            namespace = self.fleet.clusters[name].namespace
            body = _in(action.lease, namespace)
            try:
                written = await kube.request_patient(self.fleet.clusters[name], "POST",
                                             claims.leases_path(namespace), body=body,
                                             timeout=CLAIM_TIMEOUT)
                return ClaimAnswer(ClaimResult.WON, claims.read(name, written))
            except kube.KubeError as exc:
                if not (exc.status == 409 or exc.no_answer):
                    raise _missing(exc, "write the claim Lease") from None
                # 409, or no clear answer (the Lease may be stored): read it back here
                # before any other fence is tried
                read = await self._read(name, namespace, body)
                if read.result is not ClaimResult.NO_ANSWER:
                    return read
                silent.append(f"{name}: {_said(exc)}; {read.detail}")
        return ClaimAnswer(ClaimResult.NO_ANSWER, detail="; ".join(silent))

    async def _update(self, action: Claim) -> ClaimAnswer:
        held = action.held
        assert held is not None
        body = _in(action.lease, held.namespace)
        try:
            written = await kube.request_patient(self.fleet.clusters[held.cluster], "PUT",
                                         claims.leases_path(held.namespace, held.name),
                                         body=body, timeout=CLAIM_TIMEOUT)
            return ClaimAnswer(ClaimResult.WON, claims.read(held.cluster, written))
        except kube.KubeError as exc:
            if exc.status == 409:  # its resourceVersion moved on: someone else wrote it
                return await self._read(held.cluster, held.namespace, body)
            if exc.status == 404:
                return ClaimAnswer(ClaimResult.GONE, detail=f"{held.cluster}: {_said(exc)}")
            if exc.no_answer:
                return ClaimAnswer(ClaimResult.NO_ANSWER, detail=f"{held.cluster}: {_said(exc)}")
            raise _missing(exc, "update the claim Lease") from None

    async def _read(self, cluster: str, namespace: str, body: dict[str, Any]) -> ClaimAnswer:
        name, mine = body["metadata"]["name"], body["spec"]["holderIdentity"]
        try:
            found = await kube.request_patient(self.fleet.clusters[cluster], "GET",
                                       claims.leases_path(namespace, name),
                                       timeout=CLAIM_TIMEOUT)
        except kube.KubeError as exc:
            if exc.no_answer:
                return ClaimAnswer(ClaimResult.NO_ANSWER, detail=f"{cluster}: {_said(exc)}")
            if exc.status == 404:  # not stored (a create without answer), or deleted since
                return ClaimAnswer(ClaimResult.NO_ANSWER, detail=f"{cluster}: no Lease")
            raise _missing(exc, "read the claim Lease") from None
        claim = claims.read(cluster, found)
        # our own write whose answer was lost reads back as ours; a tombstone never does
        ours = claim.holder == mine and not claim.verdict
        return ClaimAnswer(ClaimResult.WON if ours else ClaimResult.TAKEN, claim)


def _key_of(obj: dict[str, Any]) -> str:
    return ((obj.get("metadata") or {}).get("labels") or {}).get(L_TASK_KEY, "")


def _in(lease: dict[str, Any], namespace: str) -> dict[str, Any]:
    return {**lease, "metadata": {**lease["metadata"], "namespace": namespace}}


def _said(exc: kube.KubeError) -> str:
    return exc.message if exc.unreachable else f"HTTP {exc.status}: {exc.message}"
