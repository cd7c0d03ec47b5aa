"""What clients.py relies on in apache-airflow-providers-cncf-kubernetes: if the provider
changes it, these fail and say what to look at (no cluster is contacted: making a client
does not connect)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json

import pytest
from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook

from airflow_provider_skyshare import clients
from airflow_provider_skyshare.fleet import parse

SERVER = "https://127.0.0.1:1"
KUBECONFIG = {
    "apiVersion": "v1", "kind": "Config", "current-context": "ctx",
    "clusters": [{"name": "c", "cluster": {"server": SERVER}},
                 {"name": "other", "cluster": {"server": "https://127.0.0.1:2"}}],
    "users": [{"name": "u", "user": {"token": "secret-token"}}],
    "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}},
                 {"name": "ctx2", "context": {"cluster": "other", "user": "u"}}],
}


@pytest.fixture
def connection(monkeypatch) -> str:
    conn = {"conn_type": "kubernetes", "extra": {"kube_config": json.dumps(KUBECONFIG)}}
    monkeypatch.setenv("AIRFLOW_CONN_SKYSHARE_TEST_K8S", json.dumps(conn))
    return "skyshare_test_k8s"


def test_get_conn_is_a_public_async_context_manager():
    """clients._new_async opens it once for the hook's parsing of the connection."""
    get_conn = inspect.unwrap(AsyncKubernetesHook.get_conn)
    assert inspect.isasyncgenfunction(get_conn), "AsyncKubernetesHook.get_conn changed shape"
    params = {p for cls in AsyncKubernetesHook.__mro__[:2]
              for p in inspect.signature(cls.__init__).parameters}
    assert {"conn_id", "cluster_context", "client_configuration"} <= params


def test_the_hooks_client_carries_the_connections_configuration(connection):
    async def host() -> tuple[str, str]:
        hook = AsyncKubernetesHook(conn_id=connection, cluster_context="ctx2")
        async with hook.get_conn() as api:
            return api.configuration.host, str(api.configuration.api_key)

    server, token = asyncio.run(host())
    assert server == "https://127.0.0.1:2"  # the context given to the hook wins
    assert "secret-token" in token


def test_our_client_for_a_connection_outlives_the_hooks(connection):
    fleet = parse({"orgs": [{"name": "o", "members": ["*"]}], "clusters": [
        {"name": "c1", "owner": "o", "connection_id": connection,
         "gpu_products": {"T4": "Tesla-T4"}}]})

    async def made() -> tuple[str, bool]:
        api = await clients.async_api(fleet.clusters["c1"])
        try:
            return api.configuration.host, api.rest_client.pool_manager.closed
        finally:
            with contextlib.suppress(Exception):
                await clients.close_async_clients()

    host, closed = asyncio.run(made())
    assert host == SERVER
    assert closed is False  # the hook closed its own client, not ours
