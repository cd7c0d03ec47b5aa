"""Summarising one cluster's nodes and pods (raw API JSON) into free GPUs per product."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from airflow_provider_skyshare.fleet import Cluster, Fleet
from airflow_provider_skyshare.snapshot import (
    ClusterCapacity,
    Holder,
    NodeGpus,
    Snapshot,
    summarize,
    tier_of,
)

T4, A100 = "Tesla-T4", "NVIDIA-A100-SXM4-80GB"


@pytest.fixture
def cluster(fleet_of: Callable[..., Fleet]) -> Cluster:
    return fleet_of([
        {"name": "bair", "owner": "bair", "gpu_products": {"T4": T4, "A100": A100}},
    ]).clusters["bair"]


Node = Callable[..., dict[str, Any]]
Pod = Callable[..., dict[str, Any]]


def by_node(cap: ClusterCapacity) -> dict[str, tuple[str, int, int, int, int]]:
    return {n.node: (n.product, n.allocatable, n.used, n.borrowed, n.free) for n in cap.nodes}


def test_idle_node(cluster: Cluster, node: Node) -> None:
    cap = summarize(cluster, [node("bair-gpu-0", 2)], [], latency_ms=12.5)
    assert cap.cluster == "bair" and cap.reachable and cap.error == ""
    assert by_node(cap) == {"bair-gpu-0": (T4, 2, 0, 0, 2)}
    assert (cap.free(T4), cap.total(T4), cap.borrowed(T4)) == (2, 2, 0)
    assert cap.pending_gpus == 0 and cap.holders == ()
    assert cap.latency_ms == 12.5


def test_running_pods_use_their_node(cluster: Cluster, node: Node, pod: Pod) -> None:
    cap = summarize(cluster, [node("n0", 4)], [
        pod("owner-job", 1, node="n0", queue="skyshare-owner"),
        pod("guest-job", 2, node="n0", queue="skyshare-borrower", org="rise"),
    ])
    assert by_node(cap) == {"n0": (T4, 4, 3, 2, 1)}
    assert cap.borrowed(T4) == 2


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_terminal_pods_do_not_count(cluster: Cluster, node: Node, pod: Pod, phase: str) -> None:
    cap = summarize(cluster, [node("n0", 2)], [pod("done", 2, node="n0", phase=phase),
                                              pod("queued-but-done", 2, phase=phase)])
    assert cap.free(T4) == 2
    assert cap.pending_gpus == 0
    assert cap.holders == ()


@pytest.mark.parametrize("phase", ["Pending", "Running", "Unknown", None])
def test_non_terminal_pods_count(cluster: Cluster, node: Node, pod: Pod, phase: str | None) -> None:
    p = pod("p", 1, node="n0")
    p["status"] = {"phase": phase} if phase else {}
    assert summarize(cluster, [node("n0", 2)], [p]).free(T4) == 1


def test_unbound_pods_are_pending(cluster: Cluster, node: Node, pod: Pod) -> None:
    cap = summarize(cluster, [node("n0", 2)], [pod("q1", 2, phase="Pending"),
                                              pod("q2", 1, phase="Pending")])
    assert cap.pending_gpus == 3
    assert cap.free(T4) == 2
    assert [h.node for h in cap.holders] == ["", ""]


def test_pods_on_unknown_nodes(cluster: Cluster, node: Node, pod: Pod) -> None:
    """A pod bound to a node that is gone, not ready or not a GPU node uses nobody's GPUs."""
    cap = summarize(cluster, [node("n0", 2), node("cpu-0", None, None)],
                    [pod("ghost", 2, node="vanished"), pod("odd", 1, node="cpu-0")])
    assert by_node(cap) == {"n0": (T4, 2, 0, 0, 2)}
    assert cap.pending_gpus == 0
    assert {(h.pod, h.node) for h in cap.holders} == {("ghost", "vanished"), ("odd", "cpu-0")}


def test_multiple_nodes_and_products(cluster: Cluster, node: Node, pod: Pod) -> None:
    nodes = [node("t4-b", 2, T4), node("t4-a", 4, T4), node("a100-0", 8, A100)]
    pods = [pod("x", 3, node="t4-a"), pod("y", 8, node="a100-0", queue="skyshare-borrower"),
            pod("z", 1, node="t4-b")]
    cap = summarize(cluster, nodes, pods)
    assert [n.node for n in cap.nodes] == ["a100-0", "t4-a", "t4-b"]  # sorted by name
    assert (cap.free(T4), cap.total(T4)) == (2, 6)
    assert (cap.free(A100), cap.total(A100), cap.borrowed(A100)) == (0, 8, 8)
    assert [n.node for n in cap.nodes_of(T4)] == ["t4-a", "t4-b"]
    assert cap.nodes_of("Tesla-V100") == []


def test_no_gpu_nodes(cluster: Cluster, node: Node, pod: Pod) -> None:
    nodes = [node("cpu-0", None, None), node("cpu-1", 0, T4), node("unlabelled", 2, None)]
    cap = summarize(cluster, nodes, [pod("waiting", 1)])
    assert cap.reachable
    assert cap.nodes == ()
    assert (cap.free(T4), cap.total(T4)) == (0, 0)
    assert cap.pending_gpus == 1


def test_empty_cluster(cluster: Cluster) -> None:
    cap = summarize(cluster, [], [])
    assert cap == ClusterCapacity("bair", True)


def test_node_with_a_product_the_fleet_does_not_name(cluster: Cluster, node: Node) -> None:
    cap = summarize(cluster, [node("v100", 4, "Tesla-V100"), node("t4", 2, T4)], [])
    assert [n.node for n in cap.nodes] == ["t4"]


def test_product_alias_is_not_a_node_label(cluster: Cluster, node: Node) -> None:
    """Nodes carry the label value (Tesla-T4), never the alias the DAG uses (T4)."""
    assert summarize(cluster, [node("n", 2, "T4")], []).nodes == ()


def test_gpu_label_of_the_cluster_is_used(fleet_of: Callable[..., Fleet], node: Node) -> None:
    c = fleet_of([{"name": "rise", "owner": "rise", "gpu_label": "cloud.example/accel"}]).clusters["rise"]
    nodes = [node("std", 2, T4), node("cloud", 2, T4, label="cloud.example/accel")]
    assert [n.node for n in summarize(c, nodes, []).nodes] == ["cloud"]


@pytest.mark.parametrize(("kwargs", "counted"), [
    ({}, True),
    ({"ready": False}, False),
    ({"unschedulable": True}, False),
    ({"taints": [{"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"}]}, False),
    ({"taints": [{"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]}, True),
    ({"taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]}, True),
])
def test_node_schedulability(cluster: Cluster, node: Node, kwargs: dict[str, Any],
                             counted: bool) -> None:
    cap = summarize(cluster, [node("n0", 2, **kwargs)], [])
    assert (cap.total(T4) == 2) is counted


def test_node_without_ready_condition_is_not_counted(cluster: Cluster, node: Node) -> None:
    n = node("n0", 2)
    n["status"]["conditions"] = [{"type": "DiskPressure", "status": "False"}]
    assert summarize(cluster, [n], []).nodes == ()


def test_odd_gpu_quantity_on_a_node_is_not_a_crash(cluster: Cluster, node: Node) -> None:
    cap = summarize(cluster, [node("odd", "1500m"), node("ok", "2")], [])
    assert [n.node for n in cap.nodes] == ["ok"]


def test_gpu_requests_of_pods(cluster: Cluster, node: Node, pod: Pod) -> None:
    pods = [
        pod("limits-only", 1, node="n0", use_limits_only=True),
        pod("two-containers", None, node="n0", containers=[
            {"name": "a", "resources": {"requests": {"nvidia.com/gpu": 1}}},
            {"name": "b", "resources": {"limits": {"nvidia.com/gpu": "2"}}},
            {"name": "sidecar"},
        ]),
        pod("bad-value", None, node="n0", containers=[
            {"name": "a", "resources": {"requests": {"nvidia.com/gpu": "lots"}}}]),
        pod("cpu-only", None, node="n0"),
    ]
    cap = summarize(cluster, [node("n0", 8)], pods)
    assert cap.nodes[0].used == 4
    assert {h.pod: h.gpus for h in cap.holders} == {"limits-only": 1, "two-containers": 3}


def test_overcommitted_node_has_zero_free(cluster: Cluster, node: Node, pod: Pod) -> None:
    cap = summarize(cluster, [node("n0", 2)], [pod("a", 2, node="n0"), pod("b", 2, node="n0")])
    assert cap.nodes[0].used == 4 and cap.nodes[0].free == 0 and cap.free(T4) == 0


def test_pending_gpus_count_for_the_product_they_ask_for(cluster: Cluster, node: Node,
                                                         pod: Pod) -> None:
    """A queued A100 job does not stand in front of a T4 job; one naming no product might."""
    nodes = [node("t4-0", 2, T4), node("a100-0", 8, A100)]
    cap = summarize(cluster, nodes, [
        pod("wants-a100", 8, phase="Pending", selector=A100),
        pod("wants-t4", 1, phase="Pending", selector=T4),
        pod("wants-any", 2, phase="Pending"),
        pod("runs", 1, node="t4-0", selector=T4),
    ])
    assert cap.pending_gpus == 11
    assert (cap.pending(T4), cap.pending(A100), cap.pending("Tesla-V100")) == (3, 10, 2)
    assert {h.pod: h.product for h in cap.holders} == {
        "wants-a100": A100, "wants-t4": T4, "wants-any": "", "runs": T4}


def test_a_total_without_products_counts_for_every_product() -> None:
    cap = ClusterCapacity("c", True, pending_gpus=4)
    assert cap.pending(T4) == cap.pending(A100) == 4


def test_holders_describe_who_holds_what(cluster: Cluster, node: Node, pod: Pod) -> None:
    cap = summarize(cluster, [node("n0", 2)], [
        pod("guest", 2, node="n0", queue="skyshare-borrower", org="rise", task="d/romil-train/r1",
            namespace="skyshare"),
    ])
    assert cap.holders == (Holder("skyshare", "guest", 2, "borrower", org="rise",
                                  task="d/romil-train/r1", node="n0", product=T4),)


@pytest.mark.parametrize(("queue", "priority", "tier"), [
    ("skyshare-owner", "high-priority", "owner"),
    ("skyshare-owner", None, "owner"),
    ("skyshare-borrower", "low-priority", "borrower"),
    ("skyshare-borrower", None, "borrower"),
    (None, "low-priority", "borrower"),   # plain low-priority work is reclaimable too
    ("skyshare-owner", "low-priority", "borrower"),
    (None, "high-priority", "other"),
    ("team-queue", None, "other"),
    (None, None, "other"),
])
def test_tier_of(cluster: Cluster, pod: Pod, queue: str | None, priority: str | None,
                 tier: str) -> None:
    assert tier_of(pod("p", 1, queue=queue, priority=priority), cluster) == tier


def test_tier_of_uses_the_clusters_own_queue_names(fleet_of: Callable[..., Fleet], pod: Pod) -> None:
    c = fleet_of([{"name": "rise", "owner": "rise", "tiers": {
        "borrower": {"local_queue": "guests", "workload_priority_class": "guest-prio"},
        "owner": {"local_queue": "home"}}}]).clusters["rise"]
    assert tier_of(pod("p", queue="guests"), c) == "borrower"
    assert tier_of(pod("p", queue=None, priority="guest-prio"), c) == "borrower"
    assert tier_of(pod("p", queue="home"), c) == "owner"
    assert tier_of(pod("p", queue="skyshare-borrower"), c) == "other"


def test_tier_of_pod_without_metadata(cluster: Cluster) -> None:
    assert tier_of({}, cluster) == "other"


def test_node_gpus_free_never_negative() -> None:
    assert NodeGpus("n", T4, 2, 5, 0).free == 0
    assert NodeGpus("n", T4, 8, 3, 1).free == 5


def test_snapshot_get_unknown_cluster_is_unreachable() -> None:
    s = Snapshot({"rise": ClusterCapacity("rise", True)})
    assert s.get("rise").reachable
    missing = s.get("bair")
    assert (missing.cluster, missing.reachable, missing.error) == ("bair", False, "not probed")
    assert missing.free(T4) == 0 and missing.total(T4) == 0


def test_summarize_tolerates_sparse_json(cluster: Cluster) -> None:
    """Watch events and lists may omit empty fields entirely."""
    nodes = [{"metadata": {"name": "n0", "labels": {"nvidia.com/gpu.product": T4}},
              "status": {"allocatable": {"nvidia.com/gpu": "2"},
                         "conditions": [{"type": "Ready", "status": "True"}]}},
             {}]
    pods = [{"spec": {"nodeName": "n0", "containers": [
        {"resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}, {}]
    cap = summarize(cluster, nodes, pods)
    assert by_node(cap) == {"n0": (T4, 2, 1, 0, 1)}
    assert cap.holders[0] == Holder("", "", 1, "other", node="n0", product=T4)
