"""How each cluster of the fleet is reached: the only module that knows.

A cluster is reached through a kubeconfig context (optionally a kubeconfig path) or an
Airflow connection of type ``kubernetes`` (the cncf-kubernetes hooks read it). Clients are
cached per cluster (and per event loop for the async ones) so one triggerer shares one
connection pool per cluster among all its triggers, and no single-cluster hook is reused
for another cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import importlib
import os
import threading
from typing import Any

import yaml

from airflow_provider_skyshare.fleet import Cluster, Fleet


class ClusterConfigError(ValueError):
    """A cluster's access settings cannot work (file, context or connection), with the fix."""


def kubeconfig_path(cluster: Cluster) -> str:
    if cluster.kubeconfig:
        return os.path.expanduser(os.path.expandvars(cluster.kubeconfig))
    env = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    return env or os.path.expanduser("~/.kube/config")


class _Kubeconfigs:
    """Each kubeconfig file parsed once per version (path, mtime, size), for every cluster.

    A fleet of N clusters reached through one kubeconfig (the usual shape: a context per org
    and cluster) made 2N parses of the whole file per process (a check, then the client
    library's own load): 85 KB for the 20-cluster sandbox, 0.17 s a parse, 7 s of a worker's
    first placement (benchmarks (i)). libyaml's loader where PyYAML has it, as kubectl's
    speed is the yardstick a platform team has.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parsed: dict[str, tuple[tuple[int, int], dict[str, Any]]] = {}

    def read(self, path: str) -> dict[str, Any]:
        """The file's content; OSError and yaml.YAMLError as the file system and parser raise
        them (a file changed in the middle of a read is simply read again next time)."""
        stat = os.stat(path)
        version = (stat.st_mtime_ns, stat.st_size)
        with self._lock:  # concurrent first clients wait for one parse, not N
            cached = self._parsed.get(path)
            if cached is None or cached[0] != version:
                with open(path, encoding="utf-8") as fh:
                    data = yaml.load(fh, Loader=_LOADER) or {}
                if not isinstance(data, dict):
                    raise yaml.YAMLError(f"expected a mapping, found {type(data).__name__}")
                cached = self._parsed[path] = (version, data)
            return cached[1]

    def clear(self) -> None:
        with self._lock:
            self._parsed.clear()


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_kubeconfigs = _Kubeconfigs()


def check_kubeconfig(cluster: Cluster) -> str:
    """Fail early and clearly when the kubeconfig file or context does not exist."""
    return _context_config(cluster)[0]


def _context_config(cluster: Cluster) -> tuple[str, dict[str, Any]]:
    """The kubeconfig's path and a config of only this cluster's context, its cluster and its
    user (copies: the client library may write refreshed tokens into what it is given)."""
    path = kubeconfig_path(cluster)
    where = f"cluster {cluster.name!r}"
    if not os.path.exists(path):
        raise ClusterConfigError(
            f"{where}: kubeconfig {path} does not exist. Fix: set clusters[].kubeconfig in the "
            "fleet file or KUBECONFIG to an existing file (for the sandbox: "
            "`skyshare-sandbox kubeconfig`)"
        )
    try:
        data = _kubeconfigs.read(path)
    except (OSError, yaml.YAMLError) as exc:
        raise ClusterConfigError(f"{where}: kubeconfig {path} cannot be read: {exc}") from None
    contexts: dict[Any, dict[str, Any]] = {}
    for c in data.get("contexts") or []:  # the first of a name, as kubectl's merge keeps
        if isinstance(c, dict):
            contexts.setdefault(c.get("name"), c)
    name = cluster.context or data.get("current-context")
    if name not in contexts:
        listed = ", ".join(map(str, contexts)) or "none"
        if cluster.reader is not None:  # an org's own credential (fleet access)
            raise ClusterConfigError(
                f"org {cluster.org!r} has no credential on cluster {cluster.name!r}: context "
                f"{cluster.context!r} is not in {path} (contexts: {listed}). Fix: apply "
                f"`skyshare manifests --cluster {cluster.name}` there, add a context with a "
                f"token of its ServiceAccount (`kubectl -n {cluster.namespace} create token "
                "skyshare`), or correct the fleet's access")
        raise ClusterConfigError(
            f"{where}: context {name!r} is not in {path} (contexts: {listed}). "
            "Fix: set clusters[].context to one of them"
        )
    return path, _only(data, contexts[name])


def _only(data: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    spec = context.get("context") or {}

    def named(section: str, name: Any) -> list[Any]:
        first = next((e for e in data.get(section) or []
                      if isinstance(e, dict) and e.get("name") == name), None)
        return [copy.deepcopy(first)] if first is not None else []

    return {"apiVersion": "v1", "kind": "Config", "current-context": context["name"],
            "contexts": [copy.deepcopy(context)], "clusters": named("clusters", spec.get("cluster")),
            "users": named("users", spec.get("user"))}


async def check_access(fleet: Fleet) -> None:
    """Before placing: the org of this fleet view can reach every cluster it may use, so a
    missing credential is a clear error now, not a failure in the middle of a move."""
    usable = [c for c in fleet.clusters.values() if fleet.view and c.tier_for(fleet.view)]
    results = await asyncio.gather(*(ready(c) for c in usable), return_exceptions=True)
    errors = [str(r) for r in results if isinstance(r, ClusterConfigError)]
    if errors:
        raise ClusterConfigError("; ".join(errors))
    for r in results:
        if isinstance(r, BaseException):
            raise r


_sync_lock = threading.Lock()
_sync_clients: dict[tuple, Any] = {}
_async_clients: dict[tuple, Any] = {}


def credential_key(cluster: Cluster) -> tuple:
    """Who a view of the cluster talks to it as: what clients, inventories and policy reads
    are cached by (every org's reader view of a cluster alike)."""
    return (cluster.name, cluster.context, kubeconfig_path(cluster), cluster.connection_id)


def sync_api(cluster: Cluster) -> Any:
    """A ``kubernetes.client.ApiClient`` for this cluster (cached per process)."""
    key = credential_key(cluster)
    with _sync_lock:
        if key not in _sync_clients:
            _sync_clients[key] = _new_sync(cluster)
        return _sync_clients[key]


def _new_sync(cluster: Cluster) -> Any:
    from kubernetes import client
    from kubernetes.config.kube_config import KubeConfigLoader

    if cluster.connection_id:
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

        return KubernetesHook(conn_id=cluster.connection_id, cluster_context=cluster.context).get_conn()
    path, only = _context_config(cluster)
    configuration = client.Configuration()
    loader = KubeConfigLoader(config_dict=only,
                              config_base_path=os.path.dirname(os.path.abspath(path)))
    loader.load_and_set(configuration)
    return client.ApiClient(configuration)


async def async_api(cluster: Cluster) -> Any:
    """A ``kubernetes_asyncio.client.ApiClient`` for this cluster (cached per event loop)."""
    loop = asyncio.get_running_loop()
    key = (id(loop), *credential_key(cluster))
    made = _async_clients.get(key)
    if made is None:
        # A future, not the client: concurrent first calls must share one connection pool.
        made = _async_clients[key] = loop.create_task(_new_async(cluster))
    try:
        return await asyncio.shield(made)
    except BaseException:
        if made.done():
            _async_clients.pop(key, None)  # a broken kubeconfig is retried next time
        raise


SETUP_SECONDS = 60.0  # bound on making a client (imports, kubeconfig or connection look-up)


async def ready(cluster: Cluster) -> Any:
    """This cluster's client, made before any deadline that times the cluster's answer.

    In a fresh process (a worker's task, an API server's first page, a new triggerer) making
    the first client imports kubernetes_asyncio and reads the kubeconfig or the connection:
    seconds on a busy machine, which a probe's deadline must not count against the cluster.
    Whatever stops the client from being made is a ClusterConfigError naming the cluster.
    """
    try:
        return await asyncio.wait_for(async_api(cluster), SETUP_SECONDS)
    except ClusterConfigError:
        raise
    except asyncio.TimeoutError:
        raise ClusterConfigError(
            f"cluster {cluster.name!r}: its client was not ready within {SETUP_SECONDS:g}s "
            "(the kubeconfig or the Airflow connection look-up hangs)") from None
    except Exception as exc:  # the kubeconfig library's and Airflow's own errors, re-raised
        raise ClusterConfigError(
            f"cluster {cluster.name!r}: its client cannot be made: {type(exc).__name__}: {exc}"
        ) from exc


_imported: set[str] = set()  # modules whose import has finished (sys.modules has them sooner)
_import_lock = threading.Lock()


async def _import_off_loop(*modules: str) -> None:
    """Import heavy client packages in a thread: ``kubernetes_asyncio.client`` loads every API
    model (about 1.5 s), which on the loop would stall every trigger of a triggerer. One
    thread at a time, and done only once finished: a module is in sys.modules while it is
    still being imported, and a second cluster's client made then found it half-initialised
    (``kubernetes_asyncio.config`` without ``load_kube_config``; seen in the soak)."""
    if not set(modules) <= _imported:
        await asyncio.to_thread(_import_all, modules)


def _import_all(modules: tuple[str, ...]) -> None:
    with _import_lock:
        for module in modules:
            importlib.import_module(module)
            _imported.add(module)


async def _new_async(cluster: Cluster) -> Any:
    await _import_off_loop("kubernetes_asyncio.client", "kubernetes_asyncio.config.kube_config")
    from kubernetes_asyncio import client
    from kubernetes_asyncio.config.kube_config import KubeConfigLoader

    configuration = client.Configuration()
    if cluster.connection_id:
        await _import_off_loop("airflow.providers.cncf.kubernetes.hooks.kubernetes")
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook

        # The hook's public client, opened once for its parsing of the connection's extras
        # (in_cluster, kube_config_path, kube_config, cluster_context); our own long-lived
        # client then uses that configuration (tests/unit/test_hook_contract.py).
        hook = AsyncKubernetesHook(conn_id=cluster.connection_id, cluster_context=cluster.context,
                                   client_configuration=configuration)
        async with hook.get_conn() as hook_client:
            configuration = hook_client.configuration
    else:
        path, only = await asyncio.to_thread(_context_config, cluster)
        loader = KubeConfigLoader(config_dict=only,
                                  config_base_path=os.path.dirname(os.path.abspath(path)))
        await loader.load_and_set(configuration)
    return client.ApiClient(configuration)


async def close_async_clients() -> None:
    """Close the clients of the running loop (worker-side ``asyncio.run`` ends with this)."""
    loop_id = id(asyncio.get_running_loop())
    for key in [k for k in _async_clients if k[0] == loop_id]:
        made = _async_clients.pop(key)
        with contextlib.suppress(BaseException):  # closing is best effort
            await (await made).close()


def reset() -> None:
    """Forget cached clients (tests that restart clusters, or a changed kubeconfig)."""
    with _sync_lock:
        _sync_clients.clear()
    _async_clients.clear()
    _kubeconfigs.clear()
