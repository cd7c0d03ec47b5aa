"""A node that stops heartbeating, on the real sandbox, driving the supervisor.

The node lifecycle controller marks the node NotReady and taints it; the taint eviction
controller evicts the pod (DisruptionTarget `DeletionByTaintManager`, then a deletion that no
kubelet confirms); the provider records the attempt as Lost and moves the work.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from airflow_provider_skyshare.follow import TERMINATION_MARGIN
from airflow_provider_skyshare.sandbox import cluster
from tests.helpers.fixtures import wait_for
from tests.integration.test_reliability import closing, make, pods_of, running

pytestmark = pytest.mark.integration

NODE = "rise-gpu-0"
UNREACHABLE = "node.kubernetes.io/unreachable"
# heartbeat stop -> pod evicted: the grace period, then the toleration, plus slack for 2 cores
EVICTION_BOUND = (cluster.NODE_MONITOR_GRACE_SECONDS + cluster.EVICTION_TOLERATION_SECONDS
                  + 15)
GRACE = 5  # the pod's termination grace period


def not_ready(api) -> bool:
    node = api.read_node(NODE)
    return not any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


def tainted(api) -> bool:
    return any(t.key == UNREACHABLE and t.effect == "NoExecute"
               for t in api.read_node(NODE).spec.taints or [])


def evicted(admin, sup) -> bool:
    """The taint eviction controller's mark (then its deletion) on the task's rise pod."""
    return any(p.metadata.deletion_timestamp or any(
        c.type == "DisruptionTarget" and c.status == "True" for c in p.status.conditions or [])
        for p in pods_of(admin, "rise", sup))


def test_node_loss_evicts_the_pod_and_the_work_moves(sandbox, admin, kube_env, no_leaks):
    rise = admin["rise"]
    wait_for(lambda: cluster.node_ready(rise.read_node(NODE)), 60, f"{NODE} Ready at the start")
    # No kubelet confirms the evicted pod's end: the supervisor waits out its grace period
    # (wait_for_termination), then places. The duration outlasts that on rise (KWOK would
    # still play the completion it scheduled before the node went down) and then runs on bair.
    sup = make("node-loss", duration="45s", termination_grace_period=GRACE)
    marks: dict[str, float] = {}

    async def at(what: str, predicate, timeout: float) -> None:
        await asyncio.to_thread(wait_for, predicate, timeout, what)
        marks[what] = time.monotonic() - marks["heartbeat stopped"]

    async def scenario() -> dict:
        follow = asyncio.create_task(sup.follow())
        await asyncio.to_thread(wait_for, lambda: running(admin, "rise", sup), 60,
                                "attempt 1 running on rise")
        marks["heartbeat stopped"] = time.monotonic()
        await asyncio.to_thread(sandbox.node_down, "rise", NODE)
        await at("NotReady", lambda: not_ready(rise), EVICTION_BOUND)
        await at("NoExecute taint", lambda: tainted(rise), EVICTION_BOUND)
        await at("evicted", lambda: evicted(admin, sup), EVICTION_BOUND)
        await at("replacement created on bair", lambda: pods_of(admin, "bair", sup), 30)
        return await follow

    try:
        event = asyncio.run(closing(scenario()))
    finally:
        sandbox.node_up("rise", NODE)  # Ready and untainted again, for the tests after this
    marks.pop("heartbeat stopped")
    print("heartbeat stopped -> " + ", ".join(f"{k} {v:.1f}s" for k, v in marks.items()))
    assert marks["evicted"] <= EVICTION_BOUND
    # the pod's grace period (plus the supervisor's 5 s margin) after the eviction, not longer
    assert marks["replacement created on bair"] - marks["evicted"] <= GRACE + TERMINATION_MARGIN + 5
    assert event["status"] == "success", event["message"]
    tl = event["timeline"]
    assert [(a["cluster"], a["tier"], a["outcome"], a["reason"]) for a in tl] == [
        ("rise", "owner", "Lost", "DeletionByTaintManager"),
        ("bair", "borrower", "Succeeded", "Completed")], tl
    assert "NoExecute taint" in tl[0]["message"], tl[0]
    # No kubelet confirmed the deletion on the dead node; once it is back, KWOK does.
    wait_for(lambda: not pods_of(admin, "rise", sup), 60, "the evicted pod gone from rise")
    assert not pods_of(admin, "bair", sup) or all(
        p.status.phase == "Succeeded" for p in pods_of(admin, "bair", sup))
    asyncio.run(closing(sup.delete_all(0)))
    wait_for(lambda: not (pods_of(admin, "rise", sup) or pods_of(admin, "bair", sup)), 30,
             "no pod of the task left")
