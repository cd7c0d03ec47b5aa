"""Every Kubernetes manifest the docs and the kind set-up apply is accepted by a real cluster.

Each object under docs/manifests/ and docker/ (YAML documents with apiVersion, kind and
metadata; compose.yaml and the fleet file have none) is server-side applied with
dryRun=All on every sandbox cluster: the API server validates it against its schema and
RBAC rules, and Kueue's webhooks validate the Kueue objects. Nothing is stored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import config
from kubernetes.client.exceptions import ApiException

from airflow_provider_skyshare.sandbox import cluster

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SOURCES = (ROOT / "docs" / "manifests", ROOT / "docker")


def manifest_files() -> list[Path]:
    return sorted(p for d in SOURCES for pattern in ("*.yaml", "*.yml") for p in d.rglob(pattern))


def kube_objects(path: Path) -> list[dict[str, Any]]:
    docs = yaml.safe_load_all(path.read_text())
    return [d for d in docs if isinstance(d, dict) and {"apiVersion", "kind", "metadata"} <= set(d)]


MANIFESTS = [(path, obj) for path in manifest_files() for obj in kube_objects(path)]


def _id(item: tuple[Path, dict[str, Any]]) -> str:
    path, obj = item
    return f"{path.relative_to(ROOT)}:{obj['kind']}/{obj['metadata']['name']}"


def test_the_manifests_are_found():
    found = {path.relative_to(ROOT).as_posix() for path, _ in MANIFESTS}
    expected = {f"docs/manifests/{p.name}" for p in (ROOT / "docs" / "manifests").glob("*.yaml")}
    assert expected and expected <= found
    kinds = {obj["kind"] for _, obj in MANIFESTS}
    assert {"Namespace", "PriorityClass", "ClusterQueue", "LocalQueue", "WorkloadPriorityClass",
            "ResourceFlavor", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"} <= kinds


@pytest.fixture(scope="module")
def admin_apis(sandbox) -> dict[str, Any]:
    """cluster name -> ApiClient as the sandbox admin, for every sandbox cluster. The
    manifests' namespaces are made for real first (the kind fleet's `skyshare` is not the
    sandbox's): a dry run of a namespace does not let the objects in it be dry-run."""
    apis = {name: config.new_client_from_config(config_file=sandbox.kubeconfig,
                                                context=sandbox.admin_context(name))
            for name in sandbox.clusters}
    for api in apis.values():
        for _, obj in MANIFESTS:
            if obj["kind"] == "Namespace":
                cluster.apply(api, obj)
    return apis


def _path(api, obj: dict[str, Any]) -> str:
    """The object's URL; kinds the sandbox does not know are looked up by discovery."""
    try:
        return cluster.object_path(obj)
    except KeyError:
        from kubernetes.dynamic import DynamicClient

        res = DynamicClient(api).resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        group = obj["apiVersion"]
        base = f"/api/{group}" if "/" not in group else f"/apis/{group}"
        ns = obj["metadata"].get("namespace") or ("default" if res.namespaced else None)
        prefix = f"{base}/namespaces/{ns}/{res.name}" if ns else f"{base}/{res.name}"
        return f"{prefix}/{obj['metadata']['name']}"


def dry_run_apply(api, obj: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply with dryRun=All, as cluster.apply(..., dry_run=True) does."""
    if obj["kind"] in cluster._PLURALS:
        cluster.apply(api, obj, dry_run=True)
        return obj
    return api.call_api(
        _path(api, obj), "PATCH",
        query_params=[("fieldManager", cluster.FIELD_MANAGER), ("force", "true"),
                      ("dryRun", "All")],
        body=obj, header_params={"Content-Type": "application/apply-patch+yaml",
                                 "Accept": "application/json"},
        response_types_map={200: "object", 201: "object"}, _return_http_data_only=True,
        auth_settings=["BearerToken"])


@pytest.mark.parametrize(("path", "obj"), MANIFESTS, ids=[_id(m) for m in MANIFESTS])
def test_manifest_applies_with_a_server_side_dry_run(admin_apis, path, obj):
    for name, api in admin_apis.items():
        try:
            dry_run_apply(api, obj)
        except ApiException as exc:
            pytest.fail(f"{path.relative_to(ROOT)}: {obj['kind']}/{obj['metadata']['name']} "
                        f"refused by cluster {name}: HTTP {exc.status} {exc.body}")


def test_a_dry_run_stores_nothing(admin_apis):
    """The dry run is really dry: a renamed object is accepted but does not appear."""
    from kubernetes import client

    obj = next(o for _, o in MANIFESTS if o["kind"] == "PriorityClass")
    probe = {**obj, "metadata": {**obj["metadata"], "name": "skyshare-dry-run-probe"}}
    for api in admin_apis.values():
        dry_run_apply(api, probe)
        with pytest.raises(ApiException) as err:
            client.SchedulingV1Api(api).read_priority_class("skyshare-dry-run-probe")
        assert err.value.status == 404
