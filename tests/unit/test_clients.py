"""Client creation must not stall a triggerer's event loop on the first trigger."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# Runs in a fresh interpreter so kubernetes_asyncio is not imported yet. A meta-path finder
# records which thread first asks for kubernetes_asyncio.client; no network is needed since
# creating an ApiClient does not connect.
PROBE = textwrap.dedent("""
    import asyncio, sys, threading

    seen = {}

    class Spy:
        def find_spec(self, name, path=None, target=None):
            if name == "kubernetes_asyncio.client":
                seen.setdefault(name, threading.current_thread() is threading.main_thread())
            return None

    sys.meta_path.insert(0, Spy())
    from airflow_provider_skyshare import clients
    from airflow_provider_skyshare.fleetfile import load

    fleet = load(sys.argv[1])

    async def main():
        api = await clients.async_api(fleet.clusters["c1"])
        await api.close()

    asyncio.run(main())
    assert "kubernetes_asyncio.client" in seen, seen
    print("main" if seen["kubernetes_asyncio.client"] else "thread")
""")

KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: ctx, context: {cluster: c, user: u}}]
current-context: ctx
"""


FLEET = """
version: 1
orgs: [{name: o, members: ["*"]}]
clusters: [{name: c1, owner: o, context: ctx, gpu_products: {T4: Tesla-T4}}]
"""


def test_kubernetes_asyncio_is_imported_off_the_event_loop(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(FLEET)
    out = subprocess.run([sys.executable, "-c", PROBE, str(fleet)], capture_output=True, text=True,
                         env={"KUBECONFIG": str(kubeconfig), "PATH": "/usr/bin:/bin"},
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "thread"


def test_a_module_another_client_is_still_importing_is_waited_for(tmp_path, monkeypatch):
    """Two clusters' clients made at once: the second must not see the package the first one
    is importing half-initialised (a soak task failed with "partially initialized module
    'kubernetes_asyncio.config' has no attribute 'load_kube_config'")."""
    import asyncio

    from airflow_provider_skyshare import clients

    (tmp_path / "slowpkg").mkdir()
    (tmp_path / "slowpkg" / "__init__.py").write_text("")
    (tmp_path / "slowpkg" / "config.py").write_text(
        "import time\ntime.sleep(0.3)\ndef load_kube_config():\n    return 'loaded'\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    async def make(later: float) -> str:
        await asyncio.sleep(later)  # the second starts while the first is importing
        await clients._import_off_loop("slowpkg.config")
        return sys.modules["slowpkg.config"].load_kube_config()

    async def both() -> list[str]:
        return await asyncio.gather(make(0), make(0.1))

    try:
        assert asyncio.run(both()) == ["loaded", "loaded"]
    finally:
        for name in ("slowpkg.config", "slowpkg"):
            sys.modules.pop(name, None)
            getattr(clients, "_imported", set()).discard(name)


MANY = """
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}},
           {name: d, cluster: {server: "https://127.0.0.1:2"}}]
users: [{name: u, user: {token: t}}, {name: v, user: {token: w}}]
contexts: [{name: ctx, context: {cluster: c, user: u}}, {name: dtx, context: {cluster: d, user: v}}]
current-context: dtx
"""


def _cluster(kubeconfig, context):
    """Cluster c1 through `context` of `kubeconfig` (None: the file's current-context)."""
    from dataclasses import replace

    from airflow_provider_skyshare.fleet import parse

    fleet = parse({"version": 1, "orgs": [{"name": "o", "members": ["*"]}],
                   "clusters": [{"name": "c1", "owner": "o", "kubeconfig": str(kubeconfig),
                                 "context": context or "-", "gpu_products": {"T4": "Tesla-T4"}}]})
    return replace(fleet.clusters["c1"], context=context)


def test_a_kubeconfig_is_parsed_once_per_version_for_every_cluster(tmp_path, monkeypatch):
    """A fleet reaching N clusters through one file parsed it 2N times (benchmark (i))."""
    import os

    import yaml

    from airflow_provider_skyshare import clients

    clients.reset()
    path = tmp_path / "kubeconfig"
    path.write_text(MANY)
    loads = []
    real = yaml.load
    monkeypatch.setattr(yaml, "load", lambda *a, **kw: loads.append(1) or real(*a, **kw))
    assert clients.check_kubeconfig(_cluster(path, "ctx")) == str(path)
    for context in ("ctx", "dtx", None):
        clients._context_config(_cluster(path, context))
    assert len(loads) == 1
    path.write_text(MANY.replace("127.0.0.1:2", "127.0.0.1:3"))
    os.utime(path, ns=(1, 1))  # a new version, whatever the clock's resolution
    _, only = clients._context_config(_cluster(path, None))  # current-context: dtx
    assert len(loads) == 2
    assert only["clusters"] == [{"name": "d", "cluster": {"server": "https://127.0.0.1:3"}}]
    assert only["users"] == [{"name": "v", "user": {"token": "w"}}]
    assert [c["name"] for c in only["contexts"]] == ["dtx"]
    only["users"][0]["user"]["token"] = "refreshed"  # the client library may write into it
    assert clients._context_config(_cluster(path, "dtx"))[1]["users"][0]["user"]["token"] == "w"


def test_a_missing_context_names_the_contexts_there(tmp_path):
    import pytest

    from airflow_provider_skyshare import clients

    path = tmp_path / "kubeconfig"
    path.write_text(MANY)
    with pytest.raises(clients.ClusterConfigError, match=r"context 'nope' is not in .*ctx, dtx"):
        clients.check_kubeconfig(_cluster(path, "nope"))
    path.write_text("[1, 2]")
    with pytest.raises(clients.ClusterConfigError, match="cannot be read: expected a mapping"):
        clients.check_kubeconfig(_cluster(path, "ctx"))


def test_a_client_from_the_cached_kubeconfig_has_its_context_server_and_token(tmp_path):
    """The sync and async clients load only the context's part, as load_kube_config did."""
    import asyncio

    from airflow_provider_skyshare import clients

    clients.reset()
    path = tmp_path / "kubeconfig"
    path.write_text(MANY)
    sync = clients._new_sync(_cluster(path, "ctx")).configuration
    assert (sync.host, sync.api_key) == ("https://127.0.0.1:1", {"BearerToken": "Bearer t"})

    async def made():
        api = await clients._new_async(_cluster(path, None))
        try:
            return api.configuration.host, api.configuration.api_key
        finally:
            await api.close()

    assert asyncio.run(made()) == ("https://127.0.0.1:2", {"BearerToken": "Bearer w"})
