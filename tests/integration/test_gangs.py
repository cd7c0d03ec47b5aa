"""Gangs (nodes=2) on the real sandbox: two 2-node clusters, den (rise's) and lab (bair's),
Kueue's real pod groups, driving the supervisor (the code the trigger and worker run).

What is asserted comes from the apiservers' watch events (tests/helpers/podwatch.py), never
from sampling: when each member was admitted (its Kueue gate gone), and which pods of each
rank were live at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_skyshare import pods
from airflow_provider_skyshare.finish import FinishPolicy, finish
from airflow_provider_skyshare.fleet import OWNER
from airflow_provider_skyshare.fleetfile import load
from airflow_provider_skyshare.follow import Job, Settings
from airflow_provider_skyshare.names import Kind
from airflow_provider_skyshare.operators import MultiClusterGpuOperator
from airflow_provider_skyshare.placement import Request
from airflow_provider_skyshare.pods import TaskIdentity
from airflow_provider_skyshare.supervisor import Supervisor
from tests.helpers.fixtures import wait_for
from tests.helpers.podwatch import PodRecorder
from tests.integration.test_reliability import DURATION, Driven, closing, pods_of

pytestmark = pytest.mark.integration

FLEET = Path(__file__).resolve().parents[2] / "dags" / "fleet-gangs.yaml"


@pytest.fixture(scope="module")
def gang_clusters(sandbox, kube_env) -> tuple[str, str]:
    """den (rise's) and lab (bair's): two nodes of 2x T4 each."""
    for name in ("den", "lab"):
        sandbox.ensure_cluster(name, nodes=2, gpus=2, fleet=str(FLEET))
    return "den", "lab"


def gang(task_id: str, *, duration: str = "20s", **settings: Any) -> Driven:
    """romil's (rise's) 2-node job, two pods of 2 T4 each."""
    op = MultiClusterGpuOperator(task_id=task_id, image="busybox", gpus="T4:2", nodes=2,
                                 org="rise", user="romil", fleet_file=str(FLEET),
                                 annotations={DURATION: duration})
    identity = TaskIdentity("gangs", task_id, f"run-{uuid.uuid4().hex[:8]}")
    job = Job(load(FLEET), Request("T4", 2, "rise", "romil", nodes=2), op.build_template(),
              identity, Settings(**settings))
    return Driven(Supervisor.for_job(job, log=logging.getLogger(f"gang.{task_id}")))


def one_pod(admin, cluster: str, org: str, task_id: str, duration: str = "600s") -> str:
    """A one-node job of ``org`` at the owner tier on ``cluster`` (its own), created as the
    provider creates it, holding one node's two GPUs: what keeps a gang from fitting."""
    fleet = load(FLEET).for_org(org)
    target = fleet.clusters[cluster]
    template = {"metadata": {"annotations": {DURATION: duration}},
                "spec": {"containers": [{"name": "base", "image": "busybox"}]}}
    body = pods.build(template, identity=TaskIdentity("gangs", task_id, uuid.uuid4().hex[:8]),
                      attempt=1, cluster=target, tier=target.tier(OWNER),
                      request=Request("T4", 2, org), preemptions=0)
    admin[cluster].create_namespaced_pod(target.namespace, body)
    return body["metadata"]["name"]


async def verdict(sup: Driven, follow: asyncio.Task[dict]) -> dict:
    """The follower's verdict, then the end of the task as the trigger makes it (finish:
    tombstones, then every member deleted)."""
    event = await follow
    state = sup.sup.state
    assert state.verdict is not None
    await finish(state, state.verdict, FinishPolicy(), logging.getLogger("gang.finish"))
    return event


def running_pod(admin, cluster: str, org: str, name: str) -> bool:
    pod = admin[cluster].read_namespaced_pod(name, f"skyshare-{org}")
    return pod.status.phase == "Running"


def delete(admin, cluster: str, org: str, name: str) -> None:
    """Delete one of the test's own pods (gone already: fine)."""
    from kubernetes.client.exceptions import ApiException

    try:
        admin[cluster].delete_namespaced_pod(name, f"skyshare-{org}", grace_period_seconds=0)
    except ApiException as exc:
        if exc.status != 404:
            raise


def members_running(admin, cluster: str, sup: Driven) -> bool:
    return len([p for p in pods_of(admin, cluster, sup) if p.status.phase == "Running"]) == 2


def rank(name: str) -> str:
    return "rank 1" if name.endswith("-r1") else "rank 0"


def test_a_gang_waits_whole_while_one_node_is_busy_and_starts_whole_once_both_are_free(
        gang_clusters, admin, no_leaks):
    den, lab = gang_clusters
    # one node busy on each cluster, with each owner's own work: the gang fits nowhere now
    blockers = [(den, "rise", one_pod(admin, den, "rise", "den-blocker")),
                (lab, "bair", one_pod(admin, lab, "bair", "lab-blocker"))]
    sup = gang("waits-whole", duration="5s")
    try:
        for cluster, org, name in blockers:
            wait_for(lambda c=cluster, o=org, n=name: running_pod(admin, c, o, n), 60,
                     f"{name} running on {cluster}")
        with PodRecorder(admin, (den, lab), sup.identity.selector(this_try=False)) as seen:
            event, freed = asyncio.run(closing(_waits_whole(admin, sup, blockers[0], den)))
    finally:
        for cluster, org, name in blockers:
            delete(admin, cluster, org, name)
    assert event["status"] == "success", event["message"]
    admitted = seen.admitted()
    names = [f"{den}/{n}" for n in sup.timeline.last.members]
    assert sorted(admitted) == sorted(names), admitted  # created on den, admitted there only
    # neither member was admitted (its Kueue gate gone, or bound) while a node was busy
    assert all(admitted[n] > freed for n in names), (admitted, freed)
    assert [(a.cluster, a.outcome, len(a.members)) for a in sup.timeline.attempts] == [
        (den, Kind.SUCCEEDED.value, 2)]


async def _waits_whole(admin, sup: Driven, blocker: tuple[str, str, str],
                       den: str) -> tuple[dict, float]:
    """Returns the verdict, and when den's busy node was freed."""
    follow = asyncio.create_task(sup.follow())
    await asyncio.to_thread(wait_for, lambda: len(pods_of(admin, den, sup)) == 2, 60,
                            "both members created on den")
    # Kueue's own account: the group's Workload exists, whole, and has no quota reserved
    await asyncio.to_thread(wait_for, lambda: _workload_pending(admin, den, sup), 30,
                            "the gang's Workload pending on den")
    freed = time.time()
    await asyncio.to_thread(delete, admin, *blocker)
    return await verdict(sup, follow), freed


def _workload_pending(admin, cluster: str, sup: Driven) -> bool:
    from kubernetes import client

    leader = sup.timeline.last.pod if sup.timeline.last else ""
    api = client.CustomObjectsApi(admin[cluster].api_client)
    found = api.list_namespaced_custom_object("kueue.x-k8s.io", "v1beta2", "skyshare-rise",
                                              "workloads")
    ours = [w for w in found["items"] if w["metadata"]["name"] == leader]
    if not ours:
        return False
    conditions = {c["type"]: c["status"] for c in ours[0].get("status", {}).get(
        "conditions", [])}
    return conditions.get("QuotaReserved") != "True" and conditions.get("Admitted") != "True"


def test_an_owner_preempting_one_member_moves_the_whole_gang_once(gang_clusters, admin,
                                                                   no_leaks):
    den, lab = gang_clusters
    # den (rise's own) has one node busy: rise's gang borrows lab, where both members fit
    den_blocker = one_pod(admin, den, "rise", "den-blocker")
    sup = gang("moves-whole", duration="20s", wait_for_termination=True)
    owner: list[str] = []
    try:
        wait_for(lambda: running_pod(admin, den, "rise", den_blocker), 60,
                 "the blocker running on den")
        with PodRecorder(admin, (den, lab), sup.identity.selector(this_try=False)) as seen:
            event = asyncio.run(closing(_moves_whole(admin, sup, den, lab, den_blocker, owner)))
    finally:
        delete(admin, den, "rise", den_blocker)
        for name in owner:
            delete(admin, lab, "bair", name)
    assert event["status"] == "success", event["message"]
    tl = sup.timeline.attempts
    assert [(a.cluster, a.tier, a.outcome, len(a.members)) for a in tl] == [
        (lab, "borrower", Kind.PREEMPTED.value, 2), (den, "owner", Kind.SUCCEEDED.value, 2)], tl
    created = seen.created()
    # every member of each gang attempt created once, and nothing else
    assert sorted(created) == sorted([f"{lab}/{n}" for n in tl[0].members]
                                     + [f"{den}/{n}" for n in tl[1].members]), created
    # at most one live pod per member rank at any moment, across both clusters
    for group, (most, which) in seen.most_live_by(rank).items():
        assert most == 1, (group, which)
    # every member of the first gang had stopped before the second gang was admitted
    ended = seen.intervals()
    first_gone = max(end for name, _, end in ended.values() if name.startswith(f"{lab}/")
                     and end is not None)
    assert all(seen.admitted()[f"{den}/{n}"] >= first_gone for n in tl[1].members)


async def _moves_whole(admin, sup: Driven, den: str, lab: str, den_blocker: str,
                       owner: list[str]) -> dict:
    follow = asyncio.create_task(sup.follow())
    await asyncio.to_thread(wait_for, lambda: members_running(admin, lab, sup), 60,
                            "the gang running on lab (borrowed)")
    await asyncio.to_thread(delete, admin, den, "rise", den_blocker)  # den is free now
    # bair's one-node job on its own lab: Kueue reclaims one node's GPUs from the gang
    owner.append(await asyncio.to_thread(one_pod, admin, lab, "bair", "lab-owner", "3s"))
    await asyncio.to_thread(wait_for, lambda: members_running(admin, den, sup), 60,
                            "the gang running again on den")
    return await verdict(sup, follow)
