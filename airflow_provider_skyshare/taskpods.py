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
from airflow_provider_skyshare.names import L_TASK_KEY, L_TRY, Kind
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


FORGET_RETRY_SECONDS = 30.0  # a cluster restarting its apiserver: the verdict waits this long


async def forget_claims(fleet: Fleet, identity: TaskIdentity, log: logging.Logger,
                        retry_for: float = FORGET_RETRY_SECONDS) -> int:
    """Delete this task try's claim Leases (claims.py) on every cluster, once it has a
    verdict: they fence moves, and a finished task makes none. A cluster that does not
    answer is asked again for ``retry_for`` seconds (else its Leases would outlive the task);
    after that, or for a credential without the Lease permission (RBAC not re-applied after
    an upgrade), it is logged and the verdict stands."""
    async def one(name: str) -> list[str]:
        cluster, delay = fleet.clusters[name], 0.5
        deadline = asyncio.get_running_loop().time() + retry_for
        while True:
            try:
                listing = await kube.request(cluster, "GET",
                                             claims.leases_path(cluster.namespace),
                                             query={"labelSelector": identity.selector()})
                break
            except kube.KubeError as exc:
                if not exc.no_answer or asyncio.get_running_loop().time() > deadline:
                    log.warning("could not list this task's claims on %s: %s", name, exc)
                    return []
            except clients.ClusterConfigError as exc:
                log.warning("could not list this task's claims on %s: %s", name, exc)
                return []
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        return [n for lease in listing.get("items") or []
                if (n := await _forget(cluster, lease["metadata"], log))]

    return len(await _everywhere(fleet, one))


async def _forget(cluster: Cluster, meta: dict[str, Any], log: logging.Logger) -> str:
    """Delete one claim (that object: uid precondition); '' when it could not be."""
    try:
        await kube.request(cluster, "DELETE", claims.leases_path(
            cluster.namespace, meta["name"]), body={
                "kind": "DeleteOptions", "apiVersion": "v1",
                "preconditions": {"uid": meta.get("uid")}})
        return meta["name"]
    except kube.KubeError as exc:
        if exc.status != 404:  # 404: another follower deleted it first
            log.warning("could not delete claim %s on %s: %s", meta["name"], cluster.name, exc)
        return ""


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
