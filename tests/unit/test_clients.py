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
