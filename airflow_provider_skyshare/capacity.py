"""Probe every cluster's free GPUs at once (async, per-cluster timeout).

Two reads per cluster (nodes, non-terminal pods) run concurrently for all clusters, so a
placement costs one round trip to the slowest reachable cluster, not the sum. An
unreachable cluster becomes an entry with its reason instead of failing the probe. Placements
of one event loop that ask at once share one probe that starts after they ask (probe_after).
A triggerer's loop reads nodes and pods from its live inventory instead (inventory.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from airflow_provider_skyshare import clients, inventory, kube, tenancy
from airflow_provider_skyshare.fleet import Cluster, Fleet
from airflow_provider_skyshare.names import NOT_ENFORCED, POLICY_PATHS, TIER_POLICY
from airflow_provider_skyshare.snapshot import ClusterCapacity, Snapshot, summarize

NON_TERMINAL = inventory.NON_TERMINAL


async def probe_cluster(cluster: Cluster, timeout: float, *,
                        policy: bool = True) -> ClusterCapacity:
    """`timeout` bounds the cluster's answer; the client's start-up comes before it.

    Reads with the cluster's own (read-only) credential, never an org's. Where each org has
    its own credential, a cluster without the tier policy is not used (not enforced there).
    `policy=False`: a worker's placement leaves that to the create on the chosen cluster
    (`unenforced`), instead of asking every cluster twice more.
    """
    enforced, cluster = cluster.enforced, cluster.as_reader()
    try:
        await clients.ready(cluster)
        start = time.monotonic()
        live = inventory.of(cluster)
        if live is not None and live.synced:  # a triggerer's: one small read, no list
            problem = await asyncio.wait_for(
                _policy_problem(cluster, timeout) if enforced else _answers(cluster, timeout),
                timeout)
        if live is not None and live.synced:  # (still, after that read)
            nodes = {"items": live.nodes.current()}
            pods = {"items": live.pods.current()}
        else:
            nodes, pods, problem = await asyncio.wait_for(asyncio.gather(
                kube.list_nodes(cluster, timeout),
                kube.request(cluster, "GET", "/api/v1/pods",
                             query={"fieldSelector": NON_TERMINAL}, timeout=timeout),
                _policy_problem(cluster, timeout) if enforced and policy else _none(),
            ), timeout)
    except asyncio.TimeoutError:
        return ClusterCapacity(cluster.name, False, f"no answer within {timeout:g}s")
    except kube.KubeError as exc:
        why = exc.message if exc.unreachable else f"HTTP {exc.status} {exc.reason}: {exc.message}"
        return ClusterCapacity(cluster.name, False, why[:200])
    except clients.ClusterConfigError as exc:  # its kubeconfig or connection: skip it, say why
        return ClusterCapacity(cluster.name, False, str(exc)[:200])
    latency = (time.monotonic() - start) * 1000
    if problem:
        return ClusterCapacity(cluster.name, False, not_enforced(cluster.name, problem))
    return summarize(cluster, nodes.get("items") or [], pods.get("items") or [], latency)


NO_POLICY = NOT_ENFORCED
ENFORCED_FRESH_SECONDS = 60.0  # a create trusts a policy read this recent


def not_enforced(cluster: str, problem: str) -> str:
    return (f"{NO_POLICY}: {problem}; each org has its own credential here, so apply "
            f"`skyshare manifests --cluster {cluster}`")


_enforced_at: dict[tuple, float] = {}  # the cluster's reader -> when its policy last held


async def unenforced(cluster: Cluster, timeout: float) -> str | None:
    """Before a create on an enforced cluster: why it must not be used (its tier policy does
    not hold), or None. A policy read in the last minute (any probe's) is trusted."""
    reader = cluster.as_reader()
    key = clients.credential_key(reader)
    if time.monotonic() - _enforced_at.get(key, -ENFORCED_FRESH_SECONDS) < ENFORCED_FRESH_SECONDS:
        return None
    problem = await asyncio.wait_for(_policy_problem(reader, timeout), timeout)
    return not_enforced(cluster.name, problem) if problem else None


async def _policy_problem(cluster: Cluster, timeout: float) -> str | None:
    """Why the cluster does not enforce the tier policy (tenancy.py), or None when it does:
    a binding without its policy, or one that only warns, enforces nothing."""
    key = clients.credential_key(cluster)
    _enforced_at.pop(key, None)  # a read that fails or finds a problem: no longer trusted
    found = await asyncio.gather(*(_get(cluster, path, timeout) for path in POLICY_PATHS))
    problem = tenancy.enforcement_problem(*found)
    if problem is None:
        _enforced_at[key] = time.monotonic()
    return problem


async def _get(cluster: Cluster, path: str, timeout: float) -> dict | str:
    """The object, or what stops us from seeing it (a reason, not an exception)."""
    kind = _KINDS[path.split("/")[-2]]
    try:
        return await kube.request(cluster, "GET", path, timeout=timeout)
    except kube.KubeError as exc:
        if exc.status == 404:
            return f"no {kind} {TIER_POLICY}"
        if exc.status == 403:
            return f"the cluster's own credential may not read its {kind}s"
        raise


_KINDS = {"validatingadmissionpolicybindings": "ValidatingAdmissionPolicyBinding",
          "validatingadmissionpolicies": "ValidatingAdmissionPolicy"}


async def _none() -> None:
    return None


async def _answers(cluster: Cluster, timeout: float) -> None:
    """One node, read: the cluster answers (its watches alone could be silently stale)."""
    await kube.request(cluster, "GET", "/api/v1/nodes", query={"limit": "1"}, timeout=timeout)


async def probe(fleet: Fleet, only: Iterable[str] | None = None, *,
                policy: bool = True) -> Snapshot:
    names = list(only) if only is not None else list(fleet.clusters)
    timeout = fleet.policy.probe_timeout_seconds
    results = await asyncio.gather(*(probe_cluster(fleet.clusters[n], timeout, policy=policy)
                                     for n in names))
    return Snapshot({r.cluster: r for r in results}, taken_at=time.time())


async def probe_placing(fleet: Fleet) -> Snapshot:
    """A placement's probe: the tier policy is checked on the chosen cluster only, at its
    create (`unenforced`)."""
    return await probe(fleet, policy=False)


async def probe_sequential(fleet: Fleet) -> Snapshot:
    """The naive baseline (one cluster after another), kept for the benchmark."""
    timeout = fleet.policy.probe_timeout_seconds
    results = [await probe_cluster(c, timeout) for c in fleet.clusters.values()]
    return Snapshot({r.cluster: r for r in results}, taken_at=time.time())


@dataclass
class _Rounds:
    """Placement probes of one event loop and fleet: the one running, and the next one,
    which every placement that asks meanwhile joins."""

    loop: asyncio.AbstractEventLoop
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    next: asyncio.Future[Snapshot] | None = None
    running: set[asyncio.Task[None]] = field(default_factory=set)


_rounds: dict[tuple, _Rounds] = {}


async def probe_after(fleet: Fleet,
                      run: Callable[[Fleet], Awaitable[Snapshot]] | None = None) -> Snapshot:
    """A probe that starts after this call, shared with every placement of this event loop
    that asks before it starts.

    A placement acts on what it sees, so it never takes an older probe's answer. But a storm
    moves hundreds of tasks of one triggerer at once, and as many probes of every cluster
    (four requests each) made each other time out (benchmark (g): 200 tasks, a 3 s deadline,
    half of them ended "unreachable"). Here they take turns: one probe runs; whoever asks
    meanwhile waits for the next, which starts when it ends and answers them all.
    """
    loop = asyncio.get_running_loop()
    key = (id(loop), _readers(fleet))
    rounds = _rounds.get(key)
    if rounds is None or rounds.loop is not loop:  # a dead loop's id can be reused
        for k in [k for k, r in _rounds.items() if r.loop.is_closed()]:
            del _rounds[k]
        rounds = _rounds[key] = _Rounds(loop)
    if rounds.next is None:
        waiting = rounds.next = loop.create_future()
        task = loop.create_task(_round(rounds, waiting, fleet, run or probe))
        rounds.running.add(task)
        task.add_done_callback(rounds.running.discard)
    return await asyncio.shield(rounds.next)


async def _round(rounds: _Rounds, waiting: asyncio.Future[Snapshot], fleet: Fleet,
                 run: Callable[[Fleet], Awaitable[Snapshot]]) -> None:
    async with rounds.lock:  # the round before this one ends first
        rounds.next = None  # whoever asks from now on is answered by the round after this
        try:
            snapshot = await run(fleet)
        except asyncio.CancelledError:  # the loop is ending
            waiting.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - a bug in the probe: every waiter raises it
            waiting.set_exception(exc)
        else:
            waiting.set_result(snapshot)


def _readers(fleet: Fleet) -> tuple:
    """The clusters' own credentials: every org's view of a fleet probes alike."""
    return tuple((*clients.credential_key(r), r.enforced)
                 for r in (c.as_reader() for c in fleet.clusters.values()))


_shared: dict[tuple, tuple[float, asyncio.Task[Snapshot]]] = {}


async def probe_shared(fleet: Fleet, max_age: float) -> Snapshot:
    """A probe shared by every caller of this event loop for `max_age` seconds.

    For checks that only decide whether to act (is a queued task better off elsewhere?):
    a triggerer with 500 queued tasks then probes each cluster once per `max_age`, not 500
    times. Placement never takes an older answer (probe_after).
    """
    loop = asyncio.get_running_loop()
    key = (id(loop), *_readers(fleet))
    now = time.monotonic()
    for k in [k for k, (at, _) in _shared.items() if now - at > max(max_age, 60.0)]:
        del _shared[k]  # old entries (other loops, other fleets) do not pile up
    made = _shared.get(key)
    if (made is None or now - made[0] > max_age or made[1].get_loop() is not loop
            or (made[1].done() and made[1].cancelled())):  # a dead loop's id can be reused
        made = _shared[key] = (now, loop.create_task(probe(fleet)))
    return await asyncio.shield(made[1])
