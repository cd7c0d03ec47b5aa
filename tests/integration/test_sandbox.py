"""The sandbox is a real Kubernetes + Kueue: what the provider relies on, checked live."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.helpers.fixtures import wait_for

pytestmark = pytest.mark.integration
# On bair: rise's namespace is at the borrower tier, bair's own at the owner tier; pods that
# are not Kueue's go where no org's tier applies.
NAMESPACES = {"skyshare-borrower": "skyshare-rise", "skyshare-owner": "skyshare-bair",
              None: "default"}


def ns_of(pod: dict) -> str:
    return NAMESPACES[pod["metadata"]["labels"].get("kueue.x-k8s.io/queue-name")]


def create(api, pod: dict):
    return api.create_namespaced_pod(ns_of(pod), pod)


def gpu_pod(name: str, *, queue: str | None, priority: str, gpus: int = 2,
            duration: str | None = None) -> dict:
    labels = {"sandbox-test": "yes"}
    if queue:
        labels |= {"kueue.x-k8s.io/queue-name": queue, "kueue.x-k8s.io/priority-class": priority}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels,
                         "annotations": {"sandbox.skyshare.dev/duration": duration}
                         if duration else {}},
            "spec": {"restartPolicy": "Never", "priorityClassName": priority,
                     "containers": [{"name": "base", "image": "busybox", "resources": {
                         "limits": {"nvidia.com/gpu": str(gpus)}}}]}}


@pytest.fixture
def bair(admin):
    api = admin["bair"]
    yield api
    for ns in NAMESPACES.values():
        api.delete_collection_namespaced_pod(ns, label_selector="sandbox-test=yes",
                                             grace_period_seconds=0)
    wait_for(lambda: not api.list_pod_for_all_namespaces(label_selector="sandbox-test=yes").items,
             30, "test pods gone")


def read(api, name):
    found = api.list_pod_for_all_namespaces(field_selector=f"metadata.name={name}").items
    return found[0] if found else None


def phase(api, name):
    pod = read(api, name)
    return pod.status.phase if pod else "Gone"


def test_up_is_idempotent_and_status_shows_two_t4_per_cluster(sandbox):
    cli = [sys.executable, "-m", "airflow_provider_skyshare.sandbox.cli"]
    start = time.monotonic()
    subprocess.run([*cli, "up"], check=True, capture_output=True, timeout=300)
    second = time.monotonic() - start
    out = subprocess.run([*cli, "status"], check=True, capture_output=True, text=True).stdout
    for name in ("rise", "bair"):
        line = next(row for row in out.splitlines() if row.startswith(name + " "))
        assert "2 Tesla-T4" in line, out
        assert "DOWN" not in line, out
    assert second < 30, f"a second `up` took {second:.1f}s"


def test_kueue_gates_admits_schedules_runs_and_kwok_finishes(bair):
    name = f"life-{uuid.uuid4().hex[:6]}"
    created = create(bair, gpu_pod(name, queue="skyshare-owner", priority="low-priority",
                                   duration="2s"))
    assert [g.name for g in created.spec.scheduling_gates or []] == ["kueue.x-k8s.io/admission"]
    wait_for(lambda: phase(bair, name) == "Running", 30, "running")
    pod = read(bair, name)
    assert pod.spec.node_name == "bair-gpu-0"
    assert not pod.spec.scheduling_gates
    wait_for(lambda: phase(bair, name) == "Succeeded", 30, "succeeded after its duration")


def unique(name: str) -> str:
    """Fresh pod names: Kueue names a pod's Workload after the pod, and a finished Workload of
    an earlier same-named pod would hold the new one (unless the garbage collector ran)."""
    return f"{name}-{uuid.uuid4().hex[:6]}"


def test_kueue_preempts_borrowed_low_priority_work_for_the_owner(bair):
    low, high = unique("low"), unique("high")
    create(bair, gpu_pod(low, queue="skyshare-borrower", priority="low-priority"))
    wait_for(lambda: phase(bair, low) == "Running", 30, "low running")
    term = seen_condition(bair, low, "TerminationTarget", lambda: create(
        bair, gpu_pod(high, queue="skyshare-owner", priority="high-priority", duration="60s")))
    assert term.reason == "WorkloadEvictedDueToPreempted"
    wait_for(lambda: phase(bair, low) == "Gone", 30, "low deleted")
    wait_for(lambda: phase(bair, high) == "Running", 30, "high running")


def seen_condition(api, name: str, kind: str, start, timeout: float = 30):
    """Watch the pod from before `start()` runs and return the first `kind` condition seen.

    The condition can live only milliseconds before the pod is deleted, so polling may miss it.
    """
    from kubernetes import watch

    selector = f"metadata.name={name}"
    # Watch from the resourceVersion before start(): the apiserver replays every change since.
    rv = api.list_pod_for_all_namespaces(field_selector=selector).metadata.resource_version
    start()
    w = watch.Watch()
    for event in w.stream(api.list_pod_for_all_namespaces, field_selector=selector,
                          resource_version=rv, timeout_seconds=int(timeout)):
        for c in event["object"].status.conditions or []:
            if c.type == kind and c.status == "True":
                w.stop()
                return c
    raise AssertionError(f"no {kind} condition on {name} within {timeout:g}s")


def test_kube_scheduler_preempts_without_kueue(bair):
    low, high = unique("plain-low"), unique("plain-high")
    create(bair, gpu_pod(low, queue=None, priority="low-priority"))
    wait_for(lambda: phase(bair, low) == "Running", 30, "plain-low running")
    cond = seen_condition(bair, low, "DisruptionTarget", lambda: create(
        bair, gpu_pod(high, queue=None, priority="high-priority", duration="60s")))
    assert cond.reason == "PreemptionByScheduler"
    wait_for(lambda: phase(bair, high) == "Running", 30, "plain-high running")


def test_each_credential_can_do_what_the_provider_needs_and_nothing_else(sandbox, bair):
    """The cluster's own credential reads capacity; an org's runs pods in its namespace."""
    def core(context: str) -> client.CoreV1Api:
        return client.CoreV1Api(config.new_client_from_config(config_file=sandbox.kubeconfig,
                                                            context=context))

    reader, rise = core("bair-operator"), core("rise@bair")
    assert reader.list_pod_for_all_namespaces().items is not None
    assert reader.list_node().items
    client.CustomObjectsApi(reader.api_client).list_cluster_custom_object(
        "kueue.x-k8s.io", "v1beta2", "clusterqueues")
    name = f"op-{uuid.uuid4().hex[:6]}"
    rise.create_namespaced_pod("skyshare-rise", gpu_pod(
        name, queue="skyshare-borrower", priority="low-priority", gpus=1, duration="60s"))
    assert rise.read_namespaced_pod(name, "skyshare-rise").metadata.name == name
    assert rise.list_namespaced_pod("skyshare-rise").items
    forbidden = [
        lambda: reader.create_namespaced_pod("skyshare-rise", gpu_pod(
            "x", queue="skyshare-borrower", priority="low-priority")),
        lambda: reader.delete_namespaced_pod(name, "skyshare-rise"),
        lambda: reader.delete_node("bair-gpu-0"),
        lambda: reader.list_namespaced_secret("skyshare-rise"),
        lambda: rise.list_namespaced_secret("skyshare-rise"),
        lambda: rise.create_namespaced_pod("default", gpu_pod("x", queue=None,
                                                              priority="low-priority")),
        lambda: rise.create_namespace({"metadata": {"name": "evil"}}),
        lambda: rise.patch_namespace("skyshare-rise", {"metadata": {"labels": {
            "skyshare.dev/tier": "owner"}}}),
        lambda: reader.patch_node("bair-gpu-0", {"metadata": {"labels": {"x": "y"}}}),
        lambda: client.CustomObjectsApi(reader.api_client).delete_cluster_custom_object(
            "kueue.x-k8s.io", "v1beta2", "clusterqueues", "skyshare-owner"),
        lambda: client.CustomObjectsApi(rise.api_client).create_namespaced_custom_object(
            "kueue.x-k8s.io", "v1beta2", "skyshare-rise", "localqueues", {
                "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
                "metadata": {"name": "skyshare-owner"}, "spec": {"clusterQueue": "skyshare-owner"}}),
    ]
    for attempt in forbidden:
        with pytest.raises(ApiException) as err:
            attempt()
        assert err.value.status == 403
    rise.delete_namespaced_pod(name, "skyshare-rise", grace_period_seconds=0)


def test_one_apiserver_down_leaves_the_other_serving(sandbox, admin):
    sandbox.stop_component("rise", "apiserver")
    try:
        with pytest.raises(Exception):  # noqa: B017 - connection refused, whatever the type
            admin["rise"].list_node(_request_timeout=2)
        assert admin["bair"].list_node(_request_timeout=5).items
    finally:
        sandbox.start_component("rise", "apiserver")
        restarted = time.time()
    nodes = admin["rise"].list_node(_request_timeout=5).items
    assert nodes
    gpu = [n.metadata.name for n in nodes if "nvidia.com/gpu.product" in (n.metadata.labels or {})]
    _heartbeats_again(admin["rise"], gpu, restarted)


def _heartbeats_again(core, nodes: list[str], since: float) -> None:
    """The nodes renewed their Leases after the restart and are Ready and untainted: the
    node lifecycle controller (12 s grace here) may have marked them NotReady meanwhile,
    and the next test must find the cluster as this one did (a placement once saw rise
    with "no ready Tesla-T4 node" right after this test)."""
    from airflow_provider_skyshare.sandbox import cluster

    coord = client.CoordinationV1Api(core.api_client)
    wait_for(lambda: all(coord.read_namespaced_lease(n, "kube-node-lease").spec.renew_time
                         .timestamp() > since for n in nodes), 60, "node leases renewed")
    cluster.wait_nodes_ready(cluster.State.load(), "rise", nodes, 60)


def test_garbage_collector_removes_what_a_deleted_pod_owned(bair):
    """Kueue's Workloads are owned by their pods: the sandbox runs the garbage collector
    so that what a deleted pod owned goes too, as on a real cluster."""
    name = unique("owner")
    pod = create(bair, gpu_pod(name, queue=None, priority="low-priority", gpus=0))
    owned = client.V1ConfigMap(metadata=client.V1ObjectMeta(
        name=f"{name}-owned", labels={"sandbox-test": "yes"},
        owner_references=[client.V1OwnerReference(api_version="v1", kind="Pod", name=name,
                                                  uid=pod.metadata.uid)]))
    bair.create_namespaced_config_map("default", owned)
    bair.delete_namespaced_pod(name, "default", grace_period_seconds=0)
    wait_for(lambda: phase(bair, name) == "Gone", 30, "pod gone")
    wait_for(lambda: not bair.list_namespaced_config_map(
        "default", field_selector=f"metadata.name={name}-owned").items, 30,
        "owned object collected")
