"""At most one pod per task, on the real sandbox: the claim on the next attempt, a preemption
that no follower saw, and waiting for a taken pod to stop (issue 14).

Each "at most one" is read from the apiservers' watch events (tests/helpers/podwatch.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import pytest
from kubernetes import client as k8s

from airflow_provider_skyshare import claims, finish, taskpods
from airflow_provider_skyshare.cluster_api import KubeClusterApi
from airflow_provider_skyshare.follow import Claim, ClaimAnswer, Follow, Status
from airflow_provider_skyshare.names import L_VERDICT, Kind
from airflow_provider_skyshare.snapshot import Snapshot
from airflow_provider_skyshare.supervisor import Supervisor
from tests.helpers.fixtures import provider_leases, provider_pods, wait_for
from tests.helpers.podwatch import PodRecorder
from tests.integration.test_reliability import Driven, closing, make, pods_of, running

pytestmark = pytest.mark.integration
CLUSTERS = ("rise", "bair")
HOLD = "skyshare.test/hold"  # a finalizer: the pod stays, terminating, until the test lets go


class Late(KubeClusterApi):
    """The real clusters, with this follower's claims and probes held until ``until`` is
    set: a follower that acts later than the other one. Without the fence it would probe a
    fleet where the other's attempt 2 fills rise, and create its own attempt 2 on bair."""

    def __init__(self, sup: Supervisor, until: asyncio.Event) -> None:
        super().__init__(sup.job.fleet, sup.job.identity.key)
        self.until = until

    async def probe(self, shared: bool, clusters: tuple[str, ...] = ()) -> Snapshot:
        await self.until.wait()
        return await super().probe(shared, clusters)

    async def claim(self, action: Claim) -> ClaimAnswer:
        await self.until.wait()
        return await super().claim(action)


def twin(first: Driven, name: str) -> Driven:
    """A second follower of the same task and try (an HA hand-over, a resumed triggerer):
    like the trigger, it starts from the state the task deferred with."""
    sup = Supervisor(Follow.from_dict(first.state(), first.sup.job.fleet),
                     log=logging.getLogger(name))
    return Driven(sup)


def test_two_followers_create_one_replacement_and_the_later_one_follows_it(
        sandbox, admin, kube_env, no_leaks, caplog):
    """Attempt 1 runs on rise and is deleted under both followers. The first creates attempt
    2 on rise; the second acts only once that pod runs (rise full, bair free: without the
    fence it would create attempt 2 on bair). Its claim on attempt 1's Lease is taken, with
    attempt 2 named: it follows the first one's pod and creates nothing."""
    caplog.set_level(logging.INFO)
    b: list[Driven] = []
    a = make("fence", duration="20s", log=logging.getLogger("follower-a"))
    gate = asyncio.Event()

    async def scenario():
        first = await a.start()
        b.append(twin(a, "follower-b"))
        b[0].sup.api = Late(b[0].sup, gate)
        with_a = asyncio.create_task(a.sup.follow())
        with_b = asyncio.create_task(b[0].sup.follow())
        await asyncio.to_thread(wait_for, lambda: running(admin, "rise", a), 60, "attempt 1")
        await asyncio.to_thread(admin["rise"].delete_namespaced_pod, first.pod,
                                first.namespace, grace_period_seconds=0)
        await asyncio.to_thread(wait_for, lambda: [p for p in running(admin, "rise", a)
                                                   if p.metadata.name.endswith("-a2")],
                                60, "attempt 2 running on rise")
        gate.set()
        return await asyncio.gather(with_a, with_b)

    try:
        with PodRecorder(admin, CLUSTERS, a.identity.selector()) as pods:
            state_a, state_b = asyncio.run(closing(scenario()))
    finally:
        asyncio.run(closing(a.delete_all(0)))
    b_log = "\n".join(r.getMessage() for r in caplog.records if r.name == "follower-b")
    assert "was created on rise by another follower" in b_log, b_log
    assert state_a.verdict.status.value == state_b.verdict.status.value == "success"
    assert [(t.cluster, t.number) for t in state_b.timeline.attempts] == [("rise", 1),
                                                                          ("rise", 2)]
    assert sorted(pods.created()) == sorted([f"rise/{a.identity.pod_name(n)}" for n in (1, 2)])
    most, which = pods.most_live_at_once()
    assert most == 1, which


def test_a_follower_woken_after_the_verdict_reads_the_tombstone_and_creates_nothing(
        sandbox, admin, kube_env, no_leaks, caplog):
    """Attempt 1 is deleted under both followers; B freezes at its claim. A creates attempt 2,
    which succeeds, and finishes the task: its pods are deleted, its claims become tombstones.
    Then B wakes and claims attempt 2 on attempt 1's Lease: it reads the verdict there, reports
    it (Airflow may still wait for it) and creates nothing (were the Lease deleted, B would
    create attempt 2 anew).
    Old tombstones go with the next sweep."""
    caplog.set_level(logging.INFO)
    a = make("tomb", duration="3s", log=logging.getLogger("follower-a"))
    gate = asyncio.Event()

    async def scenario():
        first = await a.start()
        b = twin(a, "follower-b")
        b.sup.api = Late(b.sup, gate)
        with_b = asyncio.create_task(b.sup.follow())
        await asyncio.to_thread(wait_for, lambda: running(admin, "rise", a), 60, "attempt 1")
        await asyncio.to_thread(admin["rise"].delete_namespaced_pod, first.pod,
                                first.namespace, grace_period_seconds=0)
        state_a = await a.sup.follow()
        await finish.finish(state_a, state_a.verdict, finish.FinishPolicy(), a.sup.log)
        gate.set()
        return state_a, await with_b

    with PodRecorder(admin, CLUSTERS, a.identity.selector()) as pods:
        state_a, state_b = asyncio.run(closing(scenario()))
    assert state_a.verdict.status is Status.SUCCESS
    assert state_b.verdict.status is Status.SUCCESS, state_b.verdict  # read, not made
    assert "tombstone" in state_b.verdict.message and "success" in state_b.verdict.message
    assert sorted(pods.created()) == sorted([f"rise/{a.identity.pod_name(n)}" for n in (1, 2)])
    tombs = tombstones(admin, a)
    assert tombs == {a.identity.pod_name(1): "success", a.identity.pod_name(2): "success"}
    assert not provider_pods(admin) and not provider_leases(admin)  # no live claim left
    asyncio.run(closing(sweep(a, now=time.time() + 30)))  # too young: kept
    assert tombstones(admin, a) == tombs
    asyncio.run(closing(sweep(a, now=time.time() + claims.TOMBSTONE_SECONDS + 30)))
    assert tombstones(admin, a) == {}


def tombstones(admin, driven: Driven) -> dict[str, str]:
    coordination = k8s.CoordinationV1Api(admin["rise"].api_client)
    found = coordination.list_namespaced_lease(
        "skyshare-rise", label_selector=f"{driven.identity.selector()},{L_VERDICT}").items
    return {x.metadata.name: x.metadata.labels[L_VERDICT] for x in found}


async def sweep(driven: Driven, now: float) -> int:
    try:
        return await taskpods.sweep_tombstones(driven.sup.job.fleet, driven.sup.log, now=now,
                                               every=0)
    finally:
        taskpods._swept_at.clear()  # a sweep "in the future" must not hold back later ones


def test_a_preemption_no_follower_saw_is_recovered_from_the_events(
        sandbox, admin, kube_env, no_leaks):
    """Attempt 1 borrows bair; it is preempted there and gone before any follower runs (every
    triggerer down). The follower that starts later records it as Preempted, with Kueue's
    reason, and counts it: with max_preemptions=0 that ends the task."""
    blocker = make("blocker", duration="600s")
    task = make("unseen", duration="10s", max_preemptions=0)  # the one preemption ends it
    owner = make("owner", org="bair", user="abbeel", duration="600s")

    async def scenario():
        await blocker.start()  # rise full: the task borrows bair
        first = await task.start()
        assert first.cluster == "bair" and first.tier == "borrower"
        await asyncio.to_thread(wait_for, lambda: running(admin, "bair", task), 60, "attempt 1")
        await owner.start()  # bair's owner: Kueue preempts the borrowed attempt
        await asyncio.to_thread(wait_for, lambda: not pods_of(admin, "bair", task), 60,
                                "the preempted pod gone")
        return await task.follow()

    event = asyncio.run(closing(scenario()))
    try:
        tl = event["timeline"]
        assert event["status"] == "preemption_limit", event["message"]
        assert [(a["number"], a["cluster"], a["outcome"]) for a in tl] == [
            (1, "bair", Kind.PREEMPTED.value)]
        assert tl[0]["preempted_by"] == "kueue (reclamation within the cohort)", tl[0]
    finally:
        for driven in (owner, blocker, task):
            asyncio.run(closing(driven.delete_all(0)))


def held(driven: Driven) -> Driven:
    """The task's pods carry a finalizer of the test's: deleted, they stay until it is lifted
    (a container still writing its checkpoint after the preemption)."""
    meta = driven.sup.job.template.setdefault("metadata", {})
    meta["finalizers"] = [*meta.get("finalizers", []), HOLD]
    return driven


def release(admin, cluster: str, driven: Driven) -> None:
    for pod in pods_of(admin, cluster, driven):
        if HOLD in (pod.metadata.finalizers or []):
            admin[cluster].patch_namespaced_pod(pod.metadata.name, pod.metadata.namespace, [
                {"op": "remove", "path": "/metadata/finalizers/"
                 f"{pod.metadata.finalizers.index(HOLD)}"}])


@pytest.mark.parametrize("wait", [True, False], ids=["wait", "no-wait"])
def test_wait_for_termination_places_the_replacement_after_the_old_pod_is_gone(
        sandbox, admin, kube_env, no_leaks, caplog, wait):
    caplog.set_level(logging.INFO)
    run = f"run-{uuid.uuid4().hex[:6]}"
    blocker = make("blocker", duration="600s")
    task = held(make("drain", duration="600s", run_id=run, wait_for_termination=wait,
                     log=logging.getLogger("drain")))
    owner = make("owner", org="bair", user="abbeel", duration="600s")

    def replacement_created() -> bool:
        return any(p.metadata.name.endswith("-a2") for c in CLUSTERS
                   for p in pods_of(admin, c, task))

    async def scenario():
        await blocker.start()
        await task.start()
        following = asyncio.create_task(task.sup.follow())
        await asyncio.to_thread(wait_for, lambda: running(admin, "bair", task), 60, "attempt 1")
        await owner.start()
        if wait:
            await asyncio.to_thread(wait_for, lambda: "waiting for pod" in caplog.text, 60,
                                    "the follower waiting for the preempted pod")
            assert not replacement_created()
        else:
            await asyncio.to_thread(wait_for, replacement_created, 60, "attempt 2 created")
        await asyncio.to_thread(release, admin, "bair", task)
        await asyncio.to_thread(wait_for, replacement_created, 60, "attempt 2 created")
        following.cancel()

    try:
        with PodRecorder(admin, CLUSTERS, task.identity.selector()) as pods:
            asyncio.run(closing(scenario()))
        spans = sorted(pods.intervals(present=True).values(), key=lambda s: s[1])
        old, new = spans[0], spans[1]
        assert old[0].endswith("-a1") and new[0].endswith("-a2")
        if wait:  # the old pod object was gone before the new one existed
            assert old[2] is not None and old[2] <= new[1], spans
            assert pods.most_live_at_once(present=True)[0] == 1
        else:  # documented: the replacement may start while the old pod still stops
            assert old[2] is None or old[2] > new[1], spans
    finally:
        for driven in (owner, blocker, task):
            asyncio.run(closing(driven.delete_all(0)))
        for cluster in CLUSTERS:  # deleted, the task's pods wait for the test's finalizer
            release(admin, cluster, task)
