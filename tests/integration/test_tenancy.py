"""The clusters hold each org to its tier, whoever writes the pod (issue 12).

Each org has its own namespace and credential on each cluster (context ORG@CLUSTER); the
apiserver's ValidatingAdmissionPolicy refuses a pod above the namespace's tier; RBAC keeps
an org out of the others' namespaces; the sandbox applies exactly `skyshare manifests`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from airflow_provider_skyshare import capacity, clients, kube, tenancy
from airflow_provider_skyshare.clients import ClusterConfigError
from airflow_provider_skyshare.fleet import parse
from airflow_provider_skyshare.fleetfile import load
from airflow_provider_skyshare.names import TIER_POLICY
from airflow_provider_skyshare.sandbox import cluster as sandbox_cluster

pytestmark = pytest.mark.integration
FLEET = Path(__file__).resolve().parents[2] / "dags" / "fleet.yaml"


def core(kubeconfig: str, context: str) -> client.CoreV1Api:
    return client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig, context=context))


def pod(name: str, queue: str, workload_priority: str, priority_class: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"kueue.x-k8s.io/queue-name": queue,
                                                  "kueue.x-k8s.io/priority-class": workload_priority}},
            "spec": {"priorityClassName": priority_class, "restartPolicy": "Never",
                     "containers": [{"name": "c", "image": "busybox",
                                     "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}


@pytest.mark.parametrize(("queue", "workload_priority", "priority_class", "what"), [
    ("skyshare-owner", "low-priority", "low-priority", "kueue.x-k8s.io/queue-name"),
    ("skyshare-borrower", "high-priority", "low-priority", "kueue.x-k8s.io/priority-class"),
    ("skyshare-borrower", "low-priority", "high-priority", "spec.priorityClassName"),
])
def test_a_borrower_cannot_write_itself_a_higher_tier(sandbox, admin, queue, workload_priority,
                                                      priority_class, what):
    rise_on_bair = core(sandbox.kubeconfig, "rise@bair")
    try:
        with pytest.raises(ApiException) as err:
            rise_on_bair.create_namespaced_pod(
                "skyshare-rise", pod("cheat", queue, workload_priority, priority_class))
    finally:  # admitted by mistake: it must not hold bair for the tests after this one
        admin["bair"].delete_collection_namespaced_pod(
            "skyshare-rise", field_selector="metadata.name=cheat", grace_period_seconds=0)
    assert err.value.status == 403
    body = json.loads(err.value.body)["message"]
    assert f"ValidatingAdmissionPolicy '{TIER_POLICY}'" in body
    assert "namespace skyshare-rise may use the borrower tier on this cluster" in body
    assert what in body


@pytest.mark.parametrize(("change", "words"), [
    (lambda b: b["spec"].update(serviceAccountName="skyshare"),
     "may not run as ServiceAccount skyshare"),
    # (a made-up Job is refused by Kueue's webhook already; any owner is, by the policy)
    (lambda b: b["metadata"].update(ownerReferences=[{
        "apiVersion": "v1", "kind": "ConfigMap", "name": "fake", "controller": True,
        "uid": "00000000-0000-0000-0000-000000000000"}]), "may not name an owner"),
])
def test_a_pod_cannot_carry_the_orgs_credential_or_hide_from_kueue(sandbox, change, words):
    body = pod("sly", "skyshare-borrower", "low-priority", "low-priority")
    change(body)
    with pytest.raises(ApiException) as err:
        core(sandbox.kubeconfig, "rise@bair").create_namespaced_pod("skyshare-rise", body,
                                                                    dry_run="All")
    assert err.value.status == 403 and words in err.value.body


def test_the_borrower_tier_is_admitted_and_the_owner_tier_on_its_own_cluster(sandbox, admin):
    cases = [("rise@bair", "skyshare-rise", "skyshare-borrower", "low-priority"),
             ("bair@bair", "skyshare-bair", "skyshare-owner", "high-priority")]
    try:
        for context, namespace, queue, priority in cases:
            made = core(sandbox.kubeconfig, context).create_namespaced_pod(
                namespace, pod("fair", queue, priority, priority), dry_run="All")
            assert made.metadata.labels["kueue.x-k8s.io/queue-name"] == queue
    finally:
        for _, namespace, _, _ in cases:
            admin["bair"].delete_collection_namespaced_pod(namespace, field_selector="metadata.name=fair")


def test_an_org_cannot_read_or_delete_another_orgs_pods(sandbox):
    rise_on_bair = core(sandbox.kubeconfig, "rise@bair")
    for call in (lambda: rise_on_bair.list_namespaced_pod("skyshare-bair"),
                 lambda: rise_on_bair.delete_namespaced_pod("any", "skyshare-bair"),
                 lambda: rise_on_bair.list_pod_for_all_namespaces()):
        with pytest.raises(ApiException) as err:
            call()
        assert err.value.status == 403
    reader = core(sandbox.kubeconfig, "bair-operator")  # the cluster's own: reads, never writes
    assert reader.list_pod_for_all_namespaces(limit=1) is not None
    with pytest.raises(ApiException) as err:
        reader.create_namespaced_pod("skyshare-bair", pod("x", "skyshare-owner", "high-priority",
                                                          "high-priority"))
    assert err.value.status == 403


def test_the_sandbox_applies_exactly_what_skyshare_manifests_prints(sandbox, kube_env):
    out = subprocess.run([sys.executable, "-m", "airflow_provider_skyshare.cli", "--fleet",
                          str(FLEET), "manifests", "--cluster", "bair"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    import yaml

    printed = [o for o in yaml.safe_load_all(out.stdout) if o]
    assert printed == tenancy.objects(load(FLEET), load(FLEET).clusters["bair"])
    api = sandbox_cluster.api_client(sandbox_cluster.State.load(), "bair")
    for obj in printed:  # each exists and a server-side apply of it changes nothing
        path = sandbox_cluster.object_path(obj)
        api.call_api(path, "GET", response_types_map={200: "object"},
                     _return_http_data_only=True, auth_settings=["BearerToken"])
        sandbox_cluster.apply(api, obj, dry_run=True)
    kinds = {o["kind"] for o in printed}
    assert {"Namespace", "ServiceAccount", "Role", "RoleBinding", "LocalQueue",
            "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} <= kinds
    queues = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in printed
              if o["kind"] == "LocalQueue"}
    assert queues == {("skyshare-rise", "skyshare-borrower"), ("skyshare-bair", "skyshare-owner")}


def test_a_cluster_without_the_policy_is_not_used(sandbox, kube_env):
    api = sandbox_cluster.api_client(sandbox_cluster.State.load(), "bair")
    binding = next(o for o in tenancy.objects(load(FLEET), load(FLEET).clusters["bair"])
                   if o["kind"] == "ValidatingAdmissionPolicyBinding")
    path = sandbox_cluster.object_path(binding)
    api.call_api(path, "DELETE", response_types_map={200: "object"}, auth_settings=["BearerToken"])
    try:
        view = load(FLEET).for_org("rise")
        cap = asyncio.run(_probe(view.clusters["bair"]))
        assert not cap.reachable
        assert capacity.NO_POLICY in cap.error and "skyshare manifests --cluster bair" in cap.error
    finally:
        sandbox_cluster.apply(api, binding)
    cap = asyncio.run(_probe(load(FLEET).for_org("rise").clusters["bair"]))
    assert cap.reachable, cap.error


def test_an_org_without_a_credential_is_refused_before_placing(sandbox, kube_env):
    fleet = load(FLEET)
    bair = fleet.clusters["bair"]
    broken = dataclasses.replace(bair, access=dataclasses.replace(bair.access,
                                                                  context="{org}-x@{cluster}"))
    view = dataclasses.replace(fleet, clusters={**fleet.clusters, "bair": broken}).for_org("rise")
    with pytest.raises(ClusterConfigError) as err:
        asyncio.run(_checked(view))
    text = str(err.value)
    assert "org 'rise' has no credential on cluster 'bair'" in text
    assert "context 'rise-x@bair'" in text
    assert "kubectl -n skyshare-rise create token skyshare" in text


async def _probe(cluster):
    try:
        return await capacity.probe_cluster(cluster, 5)
    finally:
        await clients.close_async_clients()


async def _checked(view):
    try:
        await clients.check_access(view)
    finally:
        await clients.close_async_clients()


def test_an_orgs_credential_as_an_airflow_connection(sandbox, kube_env, monkeypatch):
    """access.connection_id: each org's credential is an Airflow connection of type
    kubernetes (the cncf-kubernetes hook reads it); its token rides on every request."""
    import yaml

    with open(sandbox.kubeconfig) as fh:
        full = yaml.safe_load(fh)
    ctx = next(c for c in full["contexts"] if c["name"] == "rise@bair")
    only = {**full, "current-context": "rise@bair", "contexts": [ctx],
            "users": [u for u in full["users"] if u["name"] == ctx["context"]["user"]],
            "clusters": [c for c in full["clusters"] if c["name"] == "bair"]}
    monkeypatch.setenv("AIRFLOW_CONN_SKYSHARE_RISE_BAIR", json.dumps(
        {"conn_type": "kubernetes", "extra": {"kube_config": json.dumps(only)}}))
    data = yaml.safe_load(FLEET.read_text())
    data["clusters"][1]["access"] = {"connection_id": "skyshare_{org}_{cluster}"}
    bair = parse(data, source="conn-fleet").for_org("rise").clusters["bair"]
    assert bair.connection_id == "skyshare_rise_bair" and bair.context is None

    async def attempt(queue: str, priority: str):
        try:
            return await kube.request(bair, "POST", kube.pods_path(bair.namespace),
                                      query={"dryRun": "All"},
                                      body=pod("via-conn", queue, priority, priority))
        finally:
            await clients.close_async_clients()

    made = asyncio.run(attempt("skyshare-borrower", "low-priority"))
    assert made["metadata"]["namespace"] == "skyshare-rise"
    with pytest.raises(kube.KubeError) as err:
        asyncio.run(attempt("skyshare-owner", "high-priority"))
    assert err.value.status == 403 and f"ValidatingAdmissionPolicy '{TIER_POLICY}'" in str(
        err.value.message)
