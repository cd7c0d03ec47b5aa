"""A task's pods across the whole fleet: find the newest, delete earlier tries, delete all
(after their tombstones), sweep old tombstones, rebuild its timeline.

I/O over every cluster at once (one round trip to the slowest); a cluster that does not
answer is logged and skipped, since these run where nothing else can be done about it (a
worker starting, a trigger resuming, a task being killed).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from airflow_provider_skyshare import claims, clients, gang, kube, outcomes, pods, watch
from airflow_provider_skyshare.fleet import Cluster, Fleet
from airflow_provider_skyshare.names import L_TASK_KEY, L_TRY, L_VERDICT, MANAGED_SELECTOR, Kind
from airflow_provider_skyshare.pods import TaskIdentity
from airflow_provider_skyshare.timeline import Timeline

T = TypeVar("T")
Found = tuple[str, dict[str, Any]]  # (cluster, pod)


async def _everywhere(fleet: Fleet, one: Callable[[str], Awaitable[list[T]]]) -> list[T]:
    results = await asyncio.gather(*(one(name) for name in fleet.clusters))
    return [item for items in results for item in items]


HUB_ANSWER_SECONDS = 30.0  # the shared list's answer (a cluster that fails says so sooner)


async def find_newest(fleet: Fleet, identity: TaskIdentity, log: logging.Logger, *,
                      shared: bool = True) -> Found | None:
    """The newest attempt's pod of this task and try, on any cluster. `shared`: from the
    shared watch's cache (a triggerer resuming many tasks); else one list of this task's
    pods per cluster (a worker placing one task, which will watch one cluster at most)."""
    key, try_ = identity.key, str(identity.try_number)

    def mine(pod: dict[str, Any]) -> bool:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        return labels.get(L_TASK_KEY) == key and labels.get(L_TRY) == try_

    async def one(name: str) -> list[Found]:
        cluster = fleet.clusters[name]
        try:
            await clients.ready(cluster)  # start-up is not the cluster's answer time
        except clients.ClusterConfigError as exc:
            log.warning("cannot look for this task's pods on %s: %s", name, exc)
            return []
        # the shared watch's cache: one list per cluster however many tasks resume (a busy
        # triggerer may answer its own list late: a list per task then would make it worse)
        hub = watch.hub(cluster, cluster.namespace) if shared else None
        cached = await hub.snapshot(HUB_ANSWER_SECONDS) if hub is not None else None
        if cached is not None:
            return [(name, p) for p in cached.values() if mine(p)]
        if hub is not None and hub.error:
            log.warning("cannot look for this task's pods on %s: %s", name, hub.error)
            return []
        try:
            listing = await kube.list_pods(cluster, cluster.namespace,
                                           labelSelector=identity.selector())
        except kube.KubeError as exc:
            log.warning("cannot look for this task's pods on %s: %s", name, exc)
            return []
        return [(name, p) for p in listing.get("items") or []]

    found = await _everywhere(fleet, one)
    # a gang's attempt is its leader's pod (rank 0)
    return max(found, key=lambda item: (pods.attempt_of(item[1]), -gang.rank_of(item[1]))) \
        if found else None


async def reap_earlier_tries(fleet: Fleet, identity: TaskIdentity,
                             log: logging.Logger) -> list[str]:
    """Delete pods of this task left by earlier Airflow tries (dead by Airflow's definition;
    a cluster unreachable when they failed may still hold one), so no attempt runs twice."""
    async def one(name: str) -> list[str]:
        cluster = fleet.clusters[name]
        try:
            listing = await kube.list_pods(cluster, cluster.namespace,
                                           labelSelector=identity.selector(this_try=False))
            done = []
            for p in listing.get("items") or []:
                meta = p["metadata"]
                try_label = (meta.get("labels") or {}).get(L_TRY, "")
                stale = try_label.isdigit() and int(try_label) < identity.try_number
                if stale and await kube.delete_pod(cluster, cluster.namespace, meta["name"], 0,
                                                   uid=meta.get("uid")):
                    done.append(f"{name}/{meta['name']}")
            return done
        except kube.KubeError as exc:
            log.warning("could not look for earlier tries' pods on %s: %s", name, exc)
            return []

    if identity.try_number <= 1:
        return []
    reaped = await _everywhere(fleet, one)
    if reaped:
        log.info("deleted pods of earlier tries: %s", ", ".join(reaped))
    return reaped


@dataclass(frozen=True)
class Tomb:
    """What a task's tombstones say (claims.entombed), who writes them, and how long a
    cluster that does not answer is asked again before the verdict goes on without it."""

    verdict: str
    holder: str
    history: Timeline  # the finisher's timeline: its last attempt gets a tombstone too
    now: float
    retry_for: float = 30.0


KILL_RETRY_SECONDS = 10.0  # on_kill: Airflow gives it 30 s, and it has asked for the state


async def delete_all(fleet: Fleet, identity: TaskIdentity, log: logging.Logger, tomb: Tomb,
                     grace: int | None = None) -> list[str]:
    """Delete every pod of this task and try on every cluster (kill, mark failed), each
    after its tombstone: a follower elsewhere must not replace it."""
    async def doomed(name: str) -> dict[str, int]:
        cluster = fleet.clusters[name]
        try:
            listing = await kube.list_pods(cluster, cluster.namespace,
                                           labelSelector=identity.selector())
        except kube.KubeError as exc:
            log.warning("could not clean up on %s: %s", name, exc)
            return {}
        return {p["metadata"]["name"]: pods.attempt_of(p) for p in listing.get("items") or []}

    async def delete(name: str, names: list[str]) -> list[str]:
        cluster, done = fleet.clusters[name], []
        for pod in names:
            try:
                if await kube.delete_pod(cluster, cluster.namespace, pod, grace):
                    done.append(f"{name}/{pod}")
            except kube.KubeError as exc:
                log.warning("could not delete pod %s on %s: %s", pod, name, exc)
        return done

    return await entomb_then_delete(fleet, identity, log, tomb, doomed, delete)


async def entomb_then_delete(
        fleet: Fleet, identity: TaskIdentity, log: logging.Logger, tomb: Tomb,
        doomed: Callable[[str], Awaitable[dict[str, int]]],
        delete: Callable[[str, list[str]], Awaitable[list[str]]]) -> list[str]:
    """On each cluster at once: turn this try's claims into tombstones and write one named
    after each pod about to be deleted there (pod name -> attempt, from ``doomed``) and
    after the finisher's last attempt, then ``delete`` those pods, always (a cluster that
    does not answer, or a bug, never keeps a pod running). Why: a follower that wakes later
    and sees the pod gone claims on its name, and must find the verdict there."""
    deadline = asyncio.get_running_loop().time() + tomb.retry_for

    async def one(name: str) -> list[str]:
        names = await doomed(name)
        elsewhere: list[dict[str, Any]] = []
        try:
            elsewhere = await _entomb_here(fleet, name, identity, tomb, names, deadline, log)
        finally:
            deleted = await delete(name, list(names))
        fallback = claims.fallback_cluster(list(fleet.clusters), name)
        for body in elsewhere if fallback is not None else ():  # needed later: see below
            await _entomb(fleet.clusters[fallback], body, tomb, deadline, log)
        return deleted

    results = await asyncio.gather(*(one(name) for name in fleet.clusters),
                                   return_exceptions=True)
    for result in results:  # every cluster had its turn; now a bug fails loudly
        if isinstance(result, BaseException):
            raise result
    return [item for items in results for item in items]  # type: ignore[union-attr]


async def _entomb_here(fleet: Fleet, name: str, identity: TaskIdentity, tomb: Tomb,
                       doomed: dict[str, int], deadline: float,
                       log: logging.Logger) -> list[dict[str, Any]]:
    """The tombstones of one cluster. Returns those named after its pods, for the claim's
    fallback cluster: a follower that thinks this cluster lost claims there, but only after
    ``unreachable_grace`` (follow._claim), so they are written after the pods are deleted."""
    cluster, last = fleet.clusters[name], tomb.history.last
    named = dict(doomed)
    if last is not None and last.cluster == name:
        named.setdefault(last.pod, last.number)
    listing = await _list_claims(cluster, identity.selector(), log, deadline, "this task's claims")
    bodies = {lease["metadata"]["name"]: lease for lease in listing or ()}
    new = [_new_tomb(identity, tomb, pod, attempt) for pod, attempt in named.items()]
    for body in new:
        bodies.setdefault(body["metadata"]["name"], body)
    for body in bodies.values():
        await _entomb(cluster, body, tomb, deadline, log)
    return new


def _new_tomb(identity: TaskIdentity, tomb: Tomb, pod: str, attempt: int) -> dict[str, Any]:
    return claims.lease(namespace="", name=pod, task_key=identity.key,
                        try_number=identity.try_number, attempt=attempt + 1,
                        holder=tomb.holder, now=tomb.now, history=tomb.history, successor=None)


async def _list_claims(cluster: Cluster, selector: str, log: logging.Logger, deadline: float,
                       what: str) -> list[dict[str, Any]] | None:
    """The Leases matching ``selector`` in the org's namespace; None when it cannot say."""
    async def attempt() -> list[dict[str, Any]]:
        listing = await kube.request(cluster, "GET", claims.leases_path(cluster.namespace),
                                     query={"labelSelector": selector})
        return listing.get("items") or []

    try:
        return await _answered(attempt, deadline)
    except (kube.KubeError, clients.ClusterConfigError) as exc:
        log.warning("could not list %s on %s: %s", what, cluster.name, exc)
        return None


async def _answered(call: Callable[[], Awaitable[T]], deadline: float) -> T:
    """``call`` asked again while its cluster gives no answer (or a 403: an apiserver just
    started, RBAC not synced yet, kube.FORBIDDEN_PATIENCE_SECONDS), until ``deadline``."""
    loop, delay = asyncio.get_running_loop(), 0.5
    while True:
        try:
            return await call()
        except kube.KubeError as exc:
            if not (exc.no_answer or exc.status == 403) or loop.time() + delay > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


async def _entomb(cluster: Cluster, body: dict[str, Any], tomb: Tomb, deadline: float,
                  log: logging.Logger, conflicts: int = 3) -> str:
    """Write one tombstone: create it, or overwrite the claim as read (its resourceVersion:
    a claim renewed meanwhile is read again). '' when it could not be written."""
    name = body["metadata"]["name"]
    body = {**body, "metadata": {**body["metadata"], "namespace": cluster.namespace}}
    try:
        for _ in range(conflicts):
            existing = bool(body["metadata"].get("resourceVersion"))
            if existing and claims.read(cluster.name, body).verdict:
                return ""  # a tombstone already (another follower's verdict, or ours)
            entombed = claims.entombed(body, verdict=tomb.verdict, holder=tomb.holder,
                                       now=tomb.now)
            if await _written(cluster, entombed, existing, deadline):
                return name
            body = await _reread(cluster, name, body, deadline)
        log.warning("claim %s on %s kept changing: not marked with the verdict", name,
                    cluster.name)
    except (kube.KubeError, clients.ClusterConfigError) as exc:
        log.warning("could not mark claim %s on %s with the verdict: %s", name, cluster.name,
                    exc)
    return ""


async def _written(cluster: Cluster, body: dict[str, Any], existing: bool,
                   deadline: float) -> bool:
    """PUT (existing) or POST; False on a conflict (409) or a Lease gone (404)."""
    path = claims.leases_path(cluster.namespace, body["metadata"]["name"] if existing else None)
    try:
        await _answered(lambda: kube.request(cluster, "PUT" if existing else "POST", path,
                                             body=body), deadline)
        return True
    except kube.KubeError as exc:
        if exc.status in (404, 409):
            return False
        raise


async def _reread(cluster: Cluster, name: str, body: dict[str, Any],
                  deadline: float) -> dict[str, Any]:
    """The Lease as stored now; gone (swept meanwhile): the body to create it again."""
    try:
        return await _answered(lambda: kube.request(
            cluster, "GET", claims.leases_path(cluster.namespace, name)), deadline)
    except kube.KubeError as exc:
        if exc.status != 404:
            raise
    return {**body, "metadata": {**body["metadata"], "resourceVersion": ""}}


SWEEP_EVERY_SECONDS = 600.0  # a long-lived worker process sweeps a cluster this often
_swept_at: dict[tuple[str, str], float] = {}  # (cluster, namespace) -> when, this process


async def sweep_tombstones(fleet: Fleet, log: logging.Logger, *, now: float,
                           every: float = SWEEP_EVERY_SECONDS) -> int:
    """Delete tombstones older than claims.TOMBSTONE_SECONDS in the org's namespace on each
    cluster (at most every ``every`` seconds per process). Each delete carries the uid and
    resourceVersion it read: a Lease written again since is kept."""
    async def one(name: str) -> list[str]:
        cluster = fleet.clusters[name]
        key = (cluster.name, cluster.namespace)
        if now - _swept_at.get(key, float("-inf")) < every:
            return []
        listing = await _list_claims(cluster, f"{MANAGED_SELECTOR},{L_VERDICT}", log,
                                     asyncio.get_running_loop().time(), "tombstones")
        if listing is None:
            return []
        _swept_at[key] = now
        return [meta["name"] for lease in listing
                if claims.tombstone_expired(lease, now)
                and await _delete_lease(cluster, (meta := lease["metadata"]), log)]

    swept = await _everywhere(fleet, one)
    if swept:
        log.info("deleted %d tombstone(s) older than %ds", len(swept), claims.TOMBSTONE_SECONDS)
    return len(swept)


async def _delete_lease(cluster: Cluster, meta: dict[str, Any], log: logging.Logger) -> bool:
    try:
        await kube.request(cluster, "DELETE", claims.leases_path(
            cluster.namespace, meta["name"]), body={
                "kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {
                    "uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion")}})
        return True
    except (kube.KubeError, clients.ClusterConfigError) as exc:
        if not isinstance(exc, kube.KubeError) or exc.status not in (404, 409):
            log.warning("could not delete tombstone %s on %s: %s", meta["name"],
                        cluster.name, exc)
        return False


async def live_timeline(fleet: Fleet, identity: TaskIdentity, *, now: float) -> Timeline | None:
    """A task's timeline rebuilt from its newest pod (any try) on any cluster, for the CLI
    and the UI; None when no cluster has a pod of it."""
    async def one(name: str) -> list[Found]:
        c = fleet.clusters[name]
        # An org's view looks in its namespace; the whole fleet (CLI, UI) in every namespace,
        # through each cluster's own read-only credential.
        namespace = c.namespace if fleet.view else None
        try:
            listing = await kube.list_pods(c, namespace,
                                           labelSelector=identity.selector(this_try=False))
        except kube.KubeError:
            return []  # this cluster does not answer: the others may
        return [(name, p) for p in listing.get("items") or []]

    found = await _everywhere(fleet, one)
    if not found:
        return None
    cluster, pod = max(found, key=lambda item: (_try_of(item[1]), pods.attempt_of(item[1]),
                                                -gang.rank_of(item[1])))
    outcome = outcomes.classify(pod)
    ongoing = outcome.kind in (Kind.PENDING, Kind.RUNNING)
    return pods.timeline_from_pod(cluster, pod, now=now, why="").update_last(
        outcome="" if ongoing else outcome.kind.value, reason=outcome.reason)


def _try_of(pod: dict[str, Any]) -> int:
    value = ((pod.get("metadata") or {}).get("labels") or {}).get(L_TRY, "0")
    return int(value) if value.isdigit() else 0
