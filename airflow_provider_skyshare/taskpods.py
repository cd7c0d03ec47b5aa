"""A task's pods across the whole fleet: find the newest, delete earlier tries, delete all,
rebuild its timeline.

I/O over every cluster at once (one round trip to the slowest); a cluster that does not
answer is logged and skipped, since these run where nothing else can be done about it (a
worker starting, a trigger resuming, a task being killed).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from airflow_provider_skyshare import claims, clients, kube, outcomes, pods, watch
from airflow_provider_skyshare.fleet import Cluster, Fleet
from airflow_provider_skyshare.names import L_TASK_KEY, L_TRY, L_VERDICT, MANAGED_SELECTOR, Kind
from airflow_provider_skyshare.pods import TaskIdentity
from airflow_provider_skyshare.timeline import Timeline

T = TypeVar("T")
Found = tuple[str, dict[str, Any]]  # (cluster, pod)


async def _everywhere(fleet: Fleet, one: Callable[[str], Awaitable[list[T]]]) -> list[T]:
    results = await asyncio.gather(*(one(name) for name in fleet.clusters))
    return [item for items in results for item in items]


async def find_newest(fleet: Fleet, identity: TaskIdentity,
                      log: logging.Logger) -> Found | None:
    """The newest attempt's pod of this task and try, on any cluster."""
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
        # the shared watch's cache: one list per cluster however many tasks resume
        cached = await watch.hub(cluster, cluster.namespace).snapshot(
            fleet.policy.probe_timeout_seconds)
        if cached is not None:
            return [(name, p) for p in cached.values() if mine(p)]
        try:
            listing = await kube.list_pods(cluster, cluster.namespace,
                                           labelSelector=identity.selector())
        except kube.KubeError as exc:
            log.warning("cannot look for this task's pods on %s: %s", name, exc)
            return []
        return [(name, p) for p in listing.get("items") or []]

    found = await _everywhere(fleet, one)
    return max(found, key=lambda item: pods.attempt_of(item[1])) if found else None


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


async def delete_all(fleet: Fleet, identity: TaskIdentity, log: logging.Logger,
                     grace: int | None = None) -> list[str]:
    """Delete every pod of this task and try on every cluster (kill, mark failed)."""
    async def one(name: str) -> list[str]:
        cluster = fleet.clusters[name]
        try:
            listing = await kube.list_pods(cluster, cluster.namespace,
                                           labelSelector=identity.selector())
            done = []
            for p in listing.get("items") or []:
                if await kube.delete_pod(cluster, cluster.namespace, p["metadata"]["name"],
                                         grace):
                    done.append(f"{name}/{p['metadata']['name']}")
            return done
        except kube.KubeError as exc:
            log.warning("could not clean up on %s: %s", name, exc)
            return []

    return await _everywhere(fleet, one)


ENTOMB_RETRY_SECONDS = 30.0  # a cluster restarting its apiserver: the verdict waits this long
SWEEP_EVERY_SECONDS = 600.0  # a worker process sweeps a cluster's tombstones this often
_swept_at: dict[tuple[str, str], float] = {}  # (cluster, namespace) -> when, this process


async def entomb_claims(fleet: Fleet, identity: TaskIdentity, log: logging.Logger, *,
                        verdict: str, holder: str, timeline: Timeline, now: float,
                        retry_for: float = ENTOMB_RETRY_SECONDS) -> int:
    """Turn this task try's claim Leases (claims.py) into tombstones once it has a verdict,
    and write one more named after the last attempt's pod, before that pod is deleted: a
    follower that wakes later and claims the next attempt reads the verdict and creates
    nothing. A cluster that does not answer is asked again for ``retry_for`` seconds; after
    that, or for a credential without the Lease permission (RBAC not re-applied after an
    upgrade), it is logged and the verdict stands. Returns the tombstones written."""
    last = timeline.last

    async def one(name: str) -> list[str]:
        cluster = fleet.clusters[name]
        listing = await _list_claims(cluster, identity.selector(), log, retry_for)
        if listing is None:
            return []
        leases = {lease["metadata"]["name"]: lease for lease in listing}
        if last is not None and last.cluster == name and last.pod not in leases:
            leases[last.pod] = claims.lease(
                namespace=cluster.namespace, name=last.pod, task_key=identity.key,
                try_number=identity.try_number, attempt=last.number + 1, holder=holder,
                now=now, history=timeline, successor=None, verdict=verdict)
        return [n for body in leases.values()
                if (n := await _entomb(cluster, body, verdict, holder, now, log))]

    return len(await _everywhere(fleet, one))


async def _list_claims(cluster: Cluster, selector: str, log: logging.Logger,
                       retry_for: float) -> list[dict[str, Any]] | None:
    """The Leases matching ``selector`` in the org's namespace; None when it cannot say."""
    loop, delay = asyncio.get_running_loop(), 0.5
    deadline = loop.time() + retry_for
    while True:
        try:
            listing = await kube.request(cluster, "GET", claims.leases_path(cluster.namespace),
                                         query={"labelSelector": selector})
            return listing.get("items") or []
        except kube.KubeError as exc:
            if not exc.no_answer or loop.time() > deadline:
                log.warning("could not list this task's claims on %s: %s", cluster.name, exc)
                return None
        except clients.ClusterConfigError as exc:
            log.warning("could not list this task's claims on %s: %s", cluster.name, exc)
            return None
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


async def _entomb(cluster: Cluster, body: dict[str, Any], verdict: str, holder: str,
                  now: float, log: logging.Logger, tries: int = 3) -> str:
    """Write one tombstone: create it (no resourceVersion), or overwrite the claim as read;
    a write that lost a race (409) reads the Lease again. '' when it could not be written."""
    name = body["metadata"]["name"]
    for _ in range(tries):
        existing = bool(body["metadata"].get("resourceVersion"))
        if existing and claims.read(cluster.name, body).verdict:
            return ""  # a tombstone already (another follower's verdict, or ours)
        tomb = claims.entombed(body, verdict=verdict, holder=holder, now=now)
        path = claims.leases_path(cluster.namespace, name if existing else None)
        try:
            await kube.request(cluster, "PUT" if existing else "POST", path, body=tomb)
            return name
        except kube.KubeError as exc:
            if exc.status not in (404, 409):
                log.warning("could not mark claim %s on %s with the verdict: %s", name,
                            cluster.name, exc)
                return ""
        try:  # 409: created or renewed meanwhile; 404: swept meanwhile (create it again)
            body = await kube.request(cluster, "GET", claims.leases_path(cluster.namespace,
                                                                         name))
        except kube.KubeError as exc:
            if exc.status != 404:
                log.warning("could not read claim %s on %s: %s", name, cluster.name, exc)
                return ""
            body = {**body, "metadata": {**body["metadata"], "resourceVersion": ""}}
    log.warning("claim %s on %s kept changing: not marked with the verdict", name,
                cluster.name)
    return ""


async def sweep_tombstones(fleet: Fleet, log: logging.Logger, *, now: float,
                           every: float = SWEEP_EVERY_SECONDS) -> int:
    """Delete tombstones older than claims.TOMBSTONE_SECONDS in the org's namespace on each
    cluster (at most every ``every`` seconds per process): a worker lists the clusters when a
    try starts anyway. Each delete carries the uid and resourceVersion it read."""
    async def one(name: str) -> list[str]:
        cluster = fleet.clusters[name]
        key = (cluster.name, cluster.namespace)
        if now - _swept_at.get(key, float("-inf")) < every:
            return []
        _swept_at[key] = now
        listing = await _list_claims(cluster, f"{MANAGED_SELECTOR},{L_VERDICT}", log, 0.0)
        return [meta["name"] for lease in listing or ()
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
    except kube.KubeError as exc:
        if exc.status not in (404, 409):  # gone already, or written again since it was read
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
    cluster, pod = max(found, key=lambda item: (_try_of(item[1]), pods.attempt_of(item[1])))
    outcome = outcomes.classify(pod)
    ongoing = outcome.kind in (Kind.PENDING, Kind.RUNNING)
    return pods.timeline_from_pod(cluster, pod, now=now, why="").update_last(
        outcome="" if ongoing else outcome.kind.value, reason=outcome.reason)


def _try_of(pod: dict[str, Any]) -> int:
    value = ((pod.get("metadata") or {}).get("labels") or {}).get(L_TRY, "0")
    return int(value) if value.isdigit() else 0
