"""Free GPU capacity of the fleet at one moment, computed from nodes and pods.

Pure: ``summarize`` turns the raw node and pod lists one cluster returned into a
``ClusterCapacity``; the I/O that fetches them lives in capacity.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_skyshare.fleet import BORROWER, OWNER, Cluster
from airflow_provider_skyshare.names import (
    A_TASK,
    GPU_RESOURCE,
    L_ORG,
    PRIORITY_LABEL,
    QUEUE_LABEL,
    TERMINAL_PHASES,
)

OTHER_TIER = "other"  # a pod in none of the provider's queues (someone else's work)

__all__ = ["GPU_RESOURCE", "PRIORITY_LABEL", "QUEUE_LABEL", "TERMINAL_PHASES",  # from names
           "ClusterCapacity", "Holder", "NodeGpus", "Snapshot", "summarize", "tier_of"]


@dataclass(frozen=True)
class NodeGpus:
    node: str
    product: str  # the node's GPU label value, e.g. Tesla-T4
    allocatable: int
    used: int
    borrowed: int  # of ``used``: GPUs held by borrower-tier work (reclaimable by the owner)

    @property
    def free(self) -> int:
        return max(0, self.allocatable - self.used)


@dataclass(frozen=True)
class Holder:
    """A pod holding (or waiting for) GPUs: what `explain` says would be preempted."""

    namespace: str
    pod: str
    gpus: int
    tier: str  # owner | borrower | other
    org: str = ""
    task: str = ""
    node: str = ""
    product: str = ""  # the GPU label value it runs on or asks for ("" if it names none)


@dataclass(frozen=True)
class ClusterCapacity:
    cluster: str
    reachable: bool
    error: str = ""
    nodes: tuple[NodeGpus, ...] = ()
    pending_gpus: int = 0  # GPUs requested by pods not yet on a node (queued)
    pending_by_product: tuple[tuple[str, int], ...] = ()  # the part of it naming a product
    holders: tuple[Holder, ...] = ()
    latency_ms: float = 0.0

    def pending(self, product: str) -> int:
        """GPUs a pod of `product` would queue behind: every pending GPU but those asking for
        another product (a pod naming none may take any)."""
        return self.pending_gpus - sum(n for p, n in self.pending_by_product if p != product)

    def nodes_of(self, product: str) -> list[NodeGpus]:
        return [n for n in self.nodes if n.product == product]

    def free(self, product: str) -> int:
        return sum(n.free for n in self.nodes_of(product))

    def total(self, product: str) -> int:
        return sum(n.allocatable for n in self.nodes_of(product))

    def borrowed(self, product: str) -> int:
        return sum(n.borrowed for n in self.nodes_of(product))


@dataclass(frozen=True)
class Snapshot:
    clusters: Mapping[str, ClusterCapacity] = field(default_factory=dict)
    taken_at: float = 0.0

    def get(self, name: str) -> ClusterCapacity:
        return self.clusters.get(name) or ClusterCapacity(name, False, "not probed")


def gpus_requested(pod: Mapping[str, Any]) -> int:
    """The GPUs a pod asks for (requests, else limits), over its containers."""
    total = 0
    for c in (pod.get("spec") or {}).get("containers") or []:
        res = c.get("resources") or {}
        value = (res.get("requests") or {}).get(GPU_RESOURCE) or (res.get("limits") or {}).get(
            GPU_RESOURCE
        )
        if value is not None:
            try:
                total += int(str(value))
            except ValueError:
                continue
    return total


def _schedulable(node: Mapping[str, Any]) -> bool:
    spec = node.get("spec") or {}
    if spec.get("unschedulable"):
        return False
    for t in spec.get("taints") or []:
        if t.get("effect") == "NoSchedule" and t.get("key", "").startswith("node.kubernetes.io/"):
            return False
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def tier_of(pod: Mapping[str, Any], cluster: Cluster) -> str:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    borrower = cluster.tier(BORROWER)
    if labels.get(QUEUE_LABEL) == borrower.local_queue or labels.get(
        PRIORITY_LABEL
    ) == borrower.workload_priority_class:
        return BORROWER
    owner = cluster.tier(OWNER)
    if labels.get(QUEUE_LABEL) == owner.local_queue:
        return OWNER
    return OTHER_TIER


def summarize(
    cluster: Cluster,
    nodes: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    latency_ms: float = 0.0,
) -> ClusterCapacity:
    """Free GPUs per node: allocatable minus the requests of non-terminal pods bound to it."""
    node_info = _gpu_nodes(cluster, nodes)
    holders = tuple(h for h in (_holder(cluster, pod, node_info) for pod in pods) if h)
    used: dict[str, int] = {}
    borrowed: dict[str, int] = {}
    by_product: dict[str, int] = {}
    for h in holders:
        if not h.node:
            by_product[h.product] = by_product.get(h.product, 0) + h.gpus
            continue
        used[h.node] = used.get(h.node, 0) + h.gpus
        if h.tier == BORROWER:
            borrowed[h.node] = borrowed.get(h.node, 0) + h.gpus
    return ClusterCapacity(
        cluster=cluster.name,
        reachable=True,
        nodes=tuple(
            NodeGpus(name, product, count, used.get(name, 0), borrowed.get(name, 0))
            for name, (product, count) in sorted(node_info.items())
        ),
        pending_gpus=sum(h.gpus for h in holders if not h.node),
        pending_by_product=tuple(sorted((p, n) for p, n in by_product.items() if p)),
        holders=holders,
        latency_ms=latency_ms,
    )


def _gpu_nodes(cluster: Cluster, nodes: Iterable[Mapping[str, Any]]) -> dict[str, tuple[str, int]]:
    """Schedulable nodes with GPUs of a product the cluster offers: name -> (label, count)."""
    labels = set(cluster.gpu_products.values())
    found: dict[str, tuple[str, int]] = {}
    for node in nodes:
        meta = node.get("metadata") or {}
        product = (meta.get("labels") or {}).get(cluster.gpu_label)
        alloc = (node.get("status") or {}).get("allocatable") or {}
        try:
            count = int(str(alloc.get(GPU_RESOURCE, "0") or 0))
        except ValueError:  # not a whole number ("1500m"): no usable GPUs, not a failed probe
            count = 0
        if product in labels and count > 0 and _schedulable(node):
            found[meta.get("name", "")] = (product, count)
    return found


def _holder(cluster: Cluster, pod: Mapping[str, Any],
            node_info: dict[str, tuple[str, int]]) -> Holder | None:
    """Who holds (or, unbound, waits for) GPUs: a non-terminal pod that asks for some."""
    if (pod.get("status") or {}).get("phase") in TERMINAL_PHASES:
        return None
    gpus = gpus_requested(pod)
    if not gpus:
        return None
    meta = pod.get("metadata") or {}
    node = (pod.get("spec") or {}).get("nodeName") or ""
    wanted = ((pod.get("spec") or {}).get("nodeSelector") or {}).get(cluster.gpu_label, "")
    return Holder(
        namespace=meta.get("namespace", ""), pod=meta.get("name", ""), gpus=gpus,
        tier=tier_of(pod, cluster), org=(meta.get("labels") or {}).get(L_ORG, ""),
        task=(meta.get("annotations") or {}).get(A_TASK, ""), node=node,
        product=node_info[node][0] if node in node_info else str(wanted),
    )
