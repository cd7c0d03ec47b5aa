"""Builders shared by the unit tests of the pure core: fleets, nodes, pods and capacities.

The builders are handed out as fixtures (pytest's way of sharing code between test modules
without making tests/unit a package).
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis.configuration import set_hypothesis_home_dir

from airflow_provider_skyshare.fleet import Fleet, parse
from airflow_provider_skyshare.snapshot import ClusterCapacity, NodeGpus, Snapshot

ROOT = Path(__file__).resolve().parents[2]
# Hypothesis caches under ./.hypothesis by default; keep the work tree clean.
set_hypothesis_home_dir(os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY")
                        or tempfile.mkdtemp(prefix="skyshare-hypothesis-"))
POD_FIXTURES = ROOT / "tests" / "fixtures" / "pods"
OWNER_Q, BORROWER_Q = "skyshare-owner", "skyshare-borrower"


def seed_fleet_dict() -> dict[str, Any]:
    """The seed scenario: orgs rise and bair, one 2xT4 cluster each, same cost."""
    return {
        "version": 1,
        "defaults": {"gpu_products": {"T4": "Tesla-T4"}},
        "policy": {"borrow_cooldown_seconds": 300, "pin_owned_after_preemptions": 2,
                   "probe_timeout_seconds": 3},
        "orgs": [{"name": "rise", "members": ["romil"]},
                 {"name": "bair", "members": ["abbeel"]}],
        "clusters": [
            {"name": "rise", "owner": "rise", "context": "rise-operator", "cost_per_gpu_hour": 0.35},
            {"name": "bair", "owner": "bair", "context": "bair-operator", "cost_per_gpu_hour": 0.35},
        ],
    }


def make_fleet(clusters: list[dict[str, Any]] | None = None, *, orgs: list[dict[str, Any]] | None = None,
               policy: dict[str, Any] | None = None, source: str = "test-fleet.yaml") -> Fleet:
    """A fleet from short cluster specs; every cluster gets a context unless it names one."""
    data = seed_fleet_dict()
    if orgs is not None:
        data["orgs"] = orgs
    if policy is not None:
        data["policy"] = policy
    if clusters is not None:
        data["clusters"] = [{"context": f"{c['name']}-ctx", **c} for c in clusters]
    return parse(data, source=source)


def node_json(name: str, gpus: int | str | None = 2, product: str | None = "Tesla-T4", *,
              ready: bool = True, unschedulable: bool = False,
              taints: list[dict[str, str]] | None = None, label: str = "nvidia.com/gpu.product"
              ) -> dict[str, Any]:
    labels = {"kubernetes.io/hostname": name}
    if product is not None:
        labels[label] = product
    allocatable: dict[str, Any] = {"cpu": "8", "memory": "32Gi"}
    if gpus is not None:
        allocatable["nvidia.com/gpu"] = str(gpus)
    spec: dict[str, Any] = {}
    if unschedulable:
        spec["unschedulable"] = True
    if taints:
        spec["taints"] = taints
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
        "status": {"allocatable": allocatable,
                   "conditions": [{"type": "MemoryPressure", "status": "False"},
                                  {"type": "Ready", "status": "True" if ready else "False"}]},
    }


def pod_json(name: str, gpus: int | str | None = 1, *, node: str | None = None,
             phase: str = "Running", queue: str | None = OWNER_Q, priority: str | None = None,
             org: str | None = None, task: str | None = None, namespace: str = "skyshare",
             containers: list[dict[str, Any]] | None = None, use_limits_only: bool = False,
             selector: str | None = None) -> dict[str, Any]:
    labels: dict[str, str] = {}
    if queue:
        labels["kueue.x-k8s.io/queue-name"] = queue
    if priority:
        labels["kueue.x-k8s.io/priority-class"] = priority
    if org:
        labels["skyshare.dev/org"] = org
    annotations = {"skyshare.dev/task": task} if task else {}
    if containers is None:
        res: dict[str, Any] = {}
        if gpus is not None:
            res = {"limits": {"nvidia.com/gpu": str(gpus)}}
            if not use_limits_only:
                res["requests"] = {"nvidia.com/gpu": str(gpus)}
        containers = [{"name": "base", "image": "busybox", "resources": res}]
    spec: dict[str, Any] = {"containers": containers}
    if node:
        spec["nodeName"] = node
    if selector:
        spec["nodeSelector"] = {"nvidia.com/gpu.product": selector}
    return {
        "metadata": {"name": name, "namespace": namespace, "labels": labels,
                     "annotations": annotations},
        "spec": spec,
        "status": {"phase": phase},
    }


def capacity(cluster: str, *nodes: tuple[int, int] | tuple[int, int, int], pending: int = 0,
             product: str = "Tesla-T4", reachable: bool = True, error: str = "") -> ClusterCapacity:
    """A cluster's capacity from (allocatable, used[, borrowed]) per node."""
    if not reachable:
        return ClusterCapacity(cluster, False, error or "connection refused")
    return ClusterCapacity(
        cluster, True,
        nodes=tuple(NodeGpus(f"{cluster}-gpu-{i}", product, n[0], n[1], n[2] if len(n) > 2 else 0)
                    for i, n in enumerate(nodes)),
        pending_gpus=pending,
    )


def snapshot(*caps: ClusterCapacity) -> Snapshot:
    return Snapshot({c.cluster: c for c in caps})


def load_pod_fixture(name: str) -> dict[str, Any]:
    return json.loads((POD_FIXTURES / f"{name}.json").read_text())


@pytest.fixture
def seed_dict() -> Callable[[], dict[str, Any]]:
    return lambda: copy.deepcopy(seed_fleet_dict())


@pytest.fixture
def fleet_of() -> Callable[..., Fleet]:
    return make_fleet


@pytest.fixture
def seed_fleet() -> Fleet:
    return make_fleet()


@pytest.fixture
def node() -> Callable[..., dict[str, Any]]:
    return node_json


@pytest.fixture
def pod() -> Callable[..., dict[str, Any]]:
    return pod_json


@pytest.fixture
def cap() -> Callable[..., ClusterCapacity]:
    return capacity


@pytest.fixture
def snap() -> Callable[..., Snapshot]:
    return snapshot


@pytest.fixture
def pod_fixture() -> Callable[[str], dict[str, Any]]:
    return load_pod_fixture


@pytest.fixture(autouse=True)
def _no_remembered_fleet_variable():
    """A fleet Variable read by an earlier test (fleetconf keeps it 30 s) is not this one's."""
    from airflow_provider_skyshare import fleetconf

    fleetconf._recent.clear()
    yield
    fleetconf._recent.clear()
