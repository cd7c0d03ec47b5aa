"""Faults on the real sandbox, driving the supervisor (the code the trigger and worker run).

The clusters, Kueue, the scheduler and the apiservers are real; faults are real processes
stopped and started. Each test checks its bound and that nothing is left behind.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path

import pytest

from airflow_provider_skyshare import clients, watch
from airflow_provider_skyshare.finish import event_payload
from airflow_provider_skyshare.fleetfile import load
from airflow_provider_skyshare.follow import Follow, Job, OnUnreachable, Settings
from airflow_provider_skyshare.operators import MultiClusterGpuOperator
from airflow_provider_skyshare.placement import Request, parse_gpus
from airflow_provider_skyshare.pods import TaskIdentity
from airflow_provider_skyshare.supervisor import Supervisor
from airflow_provider_skyshare.timeline import Attempt, Timeline
from tests.helpers.fixtures import wait_for

pytestmark = pytest.mark.integration

FLEET = Path(__file__).resolve().parents[2] / "dags" / "fleet.yaml"
DURATION = "sandbox.skyshare.dev/duration"
MOVE_BOUND_SECONDS = 30  # documented in docs/concepts.md: unreachable_grace + placement


def make(task_id: str, *, org: str = "rise", user: str = "romil", gpus: str = "T4:2",
         duration: str = "30s", try_number: int = 1, run_id: str | None = None,
         log: logging.Logger | None = None, termination_grace_period: int | None = None,
         **settings) -> Driven:
    op = MultiClusterGpuOperator(task_id=task_id, image="busybox", gpus=gpus, org=org, user=user,
                                 fleet_file=str(FLEET), annotations={DURATION: duration},
                                 termination_grace_period=termination_grace_period)
    product, count = parse_gpus(gpus)
    identity = TaskIdentity("reliability", task_id, run_id or f"run-{uuid.uuid4().hex[:8]}",
                            try_number=try_number)
    if "on_unreachable" in settings:
        settings["on_unreachable"] = OnUnreachable(settings["on_unreachable"])
    job = Job(load(FLEET), Request(product, count, org, user), op.build_template(), identity,
              Settings(**settings))
    return Driven(Supervisor.for_job(job, log=log))


class Driven:
    """A task's supervisor as the worker and the trigger drive it, with the verdict as the
    event dict that dag.test() and deferrable=False hand to execute_complete."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.identity = sup.job.identity

    @property
    def timeline(self) -> Timeline:
        return self.sup.state.timeline

    def state(self) -> dict:
        return self.sup.state.to_dict()

    async def start(self) -> Attempt:
        """The worker's part before deferring: adopt or place attempt 1."""
        state: Follow = await self.sup.place()
        assert state.timeline.last is not None, state.verdict
        return state.timeline.last

    async def follow(self) -> dict:
        state = await self.sup.follow()
        return event_payload(state, state.verdict)

    async def delete_all(self, grace: int | None = None) -> list[str]:
        return await self.sup.delete_all(grace)


async def closing(coro):
    try:
        return await coro
    finally:
        await watch.close_hubs()
        await clients.close_async_clients()


def pods_of(admin, cluster: str, sup: Driven) -> list:
    return admin[cluster].list_pod_for_all_namespaces(  # the org's namespace, and any other
        label_selector=sup.identity.selector(this_try=False)).items


def running(admin, cluster: str, sup: Driven) -> list:
    return [p for p in pods_of(admin, cluster, sup) if p.status.phase == "Running"]


def wait_kueue_admits(admin, cluster: str, timeout: float = 120) -> None:
    """After an apiserver restart Kueue's watches come back only after client-go's back-off
    (seen: ~40 s). Wait until Kueue admits a pod there again, so the next test starts on a
    working cluster instead of racing that back-off."""
    api = admin[cluster]
    name = f"kueue-probe-{uuid.uuid4().hex[:6]}"
    ns = f"skyshare-{cluster}"  # the owner's own namespace there (each sandbox cluster's org)
    api.create_namespaced_pod(ns, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"kueue.x-k8s.io/queue-name": "skyshare-owner"}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}})
    try:
        wait_for(lambda: not api.read_namespaced_pod(name, ns).spec.scheduling_gates,
                 timeout, f"Kueue on {cluster} admitting again")
    finally:
        api.delete_namespaced_pod(name, ns, grace_period_seconds=0)


@pytest.fixture
def restore(sandbox):
    """Whatever a test stops is started again, even when it fails."""
    stopped: list[tuple[str, str]] = []
    yield stopped
    for cluster, component in stopped:
        sandbox.start_component(cluster, component)


def test_apiserver_down_moves_the_work_within_the_bound_and_never_runs_it_twice(
        sandbox, admin, kube_env, no_leaks, restore):
    sup = make("apiserver-move", duration="25s", unreachable_grace=8)
    timings: dict[str, float] = {}

    async def scenario():
        follow = asyncio.create_task(sup.follow())
        await asyncio.to_thread(wait_for, lambda: running(admin, "rise", sup), 60,
                                "attempt 1 running on rise")
        restore.append(("rise", "apiserver"))
        timings["stopped"] = time.monotonic()
        await asyncio.to_thread(sandbox.stop_component, "rise", "apiserver")
        await asyncio.to_thread(wait_for, lambda: pods_of(admin, "bair", sup), 60,
                                "attempt 2 created on bair")
        timings["moved"] = time.monotonic()
        await asyncio.to_thread(sandbox.start_component, "rise", "apiserver")
        restore.clear()
        return await follow

    event = asyncio.run(closing(scenario()))
    moved = timings["moved"] - timings["stopped"]
    print(f"apiserver stopped -> work on bair in {moved:.1f}s (grace 8s)")
    assert moved <= MOVE_BOUND_SECONDS
    assert event["status"] == "success", event["message"]
    tl = event["timeline"]
    assert [(a["cluster"], a["tier"], a["outcome"], a["reason"]) for a in tl] == [
        ("rise", "owner", "Lost", "ClusterUnreachable"),
        ("bair", "borrower", "Succeeded", "Completed")]
    # The rise attempt was deleted once rise answered again: it cannot finish a second copy.
    wait_for(lambda: not pods_of(admin, "rise", sup), 120, "orphan on rise deleted")
    assert event["orphans"] == []
    wait_kueue_admits(admin, "rise")
    asyncio.run(closing(sup.delete_all(0)))


def test_apiserver_down_configured_to_stay_fails_clearly_and_the_retry_cleans_up(
        sandbox, admin, kube_env, no_leaks, restore):
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    sup = make("apiserver-stay", duration="300s", unreachable_grace=5, on_unreachable="fail",
               run_id=run_id)

    async def scenario():
        follow = asyncio.create_task(sup.follow())
        await asyncio.to_thread(wait_for, lambda: running(admin, "rise", sup), 60,
                                "attempt 1 running on rise")
        restore.append(("rise", "apiserver"))
        await asyncio.to_thread(sandbox.stop_component, "rise", "apiserver")
        return await follow

    started = time.monotonic()
    event = asyncio.run(closing(scenario()))
    print(f"on_unreachable=fail: verdict after {time.monotonic() - started:.1f}s")
    assert event["status"] == "unreachable"
    assert "cluster rise unreachable for more than 5s" in event["message"]
    assert [o["cluster"] for o in event["orphans"]] == ["rise"]
    sandbox.start_component("rise", "apiserver")
    restore.clear()
    assert [p.metadata.name for p in pods_of(admin, "rise", sup)] == [sup.timeline.last.pod]
    # Airflow retries the task: the new try deletes the old try's pod before placing its own.
    retry = make("apiserver-stay", duration="300s", try_number=2, run_id=run_id)
    attempt = asyncio.run(closing(retry.start()))
    assert attempt.pod.endswith("-t2-a1")
    old = [p for p in pods_of(admin, "rise", sup) if p.metadata.name.endswith("-t1-a1")]
    assert all(p.metadata.deletion_timestamp for p in old), "the old try's pod is not terminating"
    # Its removal waits for Kueue to drop its finalizer, and Kueue's watches come back from the
    # apiserver outage after client-go's back-off (seen: ~40 s).
    wait_for(lambda: not [p for p in pods_of(admin, "rise", sup)
                          if p.metadata.name.endswith("-t1-a1")], 120, "the old try's pod gone")
    names = wait_for(lambda: (lambda ns: ns if ns == [attempt.pod] else None)(
        [p.metadata.name for p in pods_of(admin, attempt.cluster, retry)
         if p.metadata.deletion_timestamp is None]), 30, "only the retry's pod left")
    assert names == [attempt.pod]
    asyncio.run(closing(retry.delete_all(0)))
    wait_kueue_admits(admin, "rise")


def test_kueue_down_placement_skips_the_cluster_and_says_why(
        sandbox, admin, kube_env, no_leaks, restore, caplog):
    caplog.set_level(logging.INFO)
    log = logging.getLogger("skyshare.test.kueue-down")
    sup = make("kueue-down", duration="3s", log=log)
    restore.append(("rise", "kueue"))
    sandbox.stop_component("rise", "kueue")
    try:
        event = asyncio.run(closing(sup.follow()))
    finally:
        sandbox.start_component("rise", "kueue")
        restore.clear()
    assert event["status"] == "success"
    assert [(a["cluster"], a["tier"]) for a in event["timeline"]] == [("bair", "borrower")]
    said = "\n".join(r.getMessage() for r in caplog.records if r.name == log.name)
    # Kueue's webhook down: HTTP 500, which may hide a stored pod, so rise is asked first
    assert "cluster rise: server error to the create (HTTP 500" in said, said
    assert "cluster rise not created: HTTP 500" in said and "webhook" in said, said
    asyncio.run(closing(sup.delete_all(0)))


def test_two_tasks_racing_for_the_last_two_gpus_never_share_them(
        sandbox, admin, kube_env, no_leaks):
    first = make("race-a", duration="12s", rebalance_after=1)
    second = make("race-b", duration="12s", rebalance_after=1)
    seen_together: list[str] = []

    async def watch_rise(stop: asyncio.Event):
        while not stop.is_set():
            names = [p.metadata.name for s in (first, second)
                     for p in await asyncio.to_thread(running, admin, "rise", s)]
            if len(names) > 1:
                seen_together.extend(names)
            await asyncio.sleep(0.1)

    async def scenario():
        stop = asyncio.Event()
        guard = asyncio.create_task(watch_rise(stop))
        # both probe rise as 2 GPUs free at the same moment, both submit there
        results = await asyncio.gather(first.follow(), second.follow())
        stop.set()
        await guard
        return results

    events = asyncio.run(closing(scenario()))
    assert not seen_together, f"two pods running on rise's 2 GPUs at once: {seen_together}"
    assert [e["status"] for e in events] == ["success", "success"]
    finals = sorted(e["timeline"][-1]["cluster"] for e in events)
    lines = [[(a["cluster"], a["outcome"]) for a in e["timeline"]] for e in events]
    # The loser either waited its turn on rise or moved to bair's free GPUs.
    assert finals in (["bair", "rise"], ["rise", "rise"]), lines
    for sup in (first, second):
        asyncio.run(closing(sup.delete_all(0)))


def test_on_kill_deletes_the_pod_wherever_it_runs(sandbox, admin, kube_env, no_leaks):
    sup = make("killed", org="bair", user="abbeel", duration="300s")
    attempt = asyncio.run(closing(sup.start()))
    assert (attempt.cluster, attempt.tier) == ("bair", "owner")
    op = MultiClusterGpuOperator(task_id="killed", image="busybox", gpus="T4:2", org="bair", user="abbeel",
                                 fleet_file=str(FLEET))
    op._state = sup.state()
    op.on_kill()
    wait_for(lambda: not pods_of(admin, "bair", sup), 30, "pod deleted after on_kill")
