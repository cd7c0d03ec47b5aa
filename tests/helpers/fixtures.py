"""Fixtures for integration and e2e tests: Airflow's DB, kube clients, the leak check."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3
from kubernetes import client, config

from airflow_provider_skyshare.names import L_VERDICT

ROOT = Path(__file__).resolve().parents[2]
MANAGED = "app.kubernetes.io/managed-by=airflow-provider-skyshare"


@pytest.fixture(scope="session")
def airflow_db() -> str:
    """An Airflow home with a migrated SQLite DB (once per test session)."""
    home = os.environ["AIRFLOW_HOME"]
    marker = Path(home) / ".migrated"
    if not marker.exists():
        out = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"],
                             capture_output=True, text=True, env=os.environ.copy(), timeout=300)
        assert out.returncode == 0, f"airflow db migrate failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        marker.touch()
    return home


@pytest.fixture(scope="session")
def kube_env(sandbox) -> str:
    """Point KUBECONFIG at the sandbox for the provider and child processes."""
    os.environ["KUBECONFIG"] = sandbox.kubeconfig
    return sandbox.kubeconfig


REQUEST_TIMEOUT = (5, 15)  # (connect, read) seconds for every call a test makes


class TimedApiClient(client.ApiClient):
    """Every call of a test gets a deadline: a call that hangs on a stale connection must fail
    the wait that made it, not let it sleep past the wait's own deadline. Streams (watches)
    set their own."""

    def call_api(self, *args, **kwargs):
        if kwargs.get("_request_timeout") is None and kwargs.get("_preload_content", True):
            kwargs["_request_timeout"] = REQUEST_TIMEOUT
        return super().call_api(*args, **kwargs)


class AdminClients:
    """cluster name -> CoreV1Api as cluster admin, for every cluster the sandbox has *now*.

    Tests may add clusters (e.g. `campus`) mid-session; the leak check must see them too.
    For assertions only, never for the code under test.
    """

    def __init__(self, kubeconfig: str) -> None:
        self.kubeconfig = kubeconfig
        self._apis: dict = {}

    def _names(self) -> list[str]:
        from airflow_provider_skyshare.sandbox.cluster import State

        return list(State.load().clusters)

    def __getitem__(self, name: str):
        if name not in self._apis:
            configuration = client.Configuration()
            config.load_kube_config(config_file=self.kubeconfig, context=name,
                                    client_configuration=configuration, persist_config=False)
            configuration.retries = False  # one call, one timeout: wait_for asks again
            self._apis[name] = client.CoreV1Api(TimedApiClient(configuration))
        return self._apis[name]

    def __iter__(self):
        return iter(self._names())

    def items(self):
        return [(name, self[name]) for name in self._names()]


@pytest.fixture(scope="session")
def admin(sandbox, kube_env) -> AdminClients:
    return AdminClients(sandbox.kubeconfig)


def provider_pods(admin) -> dict[str, list[str]]:
    out = {}
    for name, api in admin.items():
        pods = api.list_pod_for_all_namespaces(label_selector=MANAGED).items
        if pods:
            out[name] = [f"{p.metadata.namespace}/{p.metadata.name}" for p in pods]
    return out


def provider_leases(admin, tombstones: bool = False) -> dict[str, list[str]]:
    """The live claims (claims.py) left on the clusters, and with ``tombstones`` the
    tombstones too: a finished task turns its own claims into tombstones (kept an hour)."""
    out = {}
    selector = MANAGED if tombstones else f"{MANAGED},!{L_VERDICT}"
    for name, api in admin.items():
        leases = client.CoordinationV1Api(api.api_client).list_lease_for_all_namespaces(
            label_selector=selector).items
        if leases:
            out[name] = [f"{x.metadata.namespace}/{x.metadata.name}" for x in leases]
    return out


def _forget(admin, found: dict[str, list[str]]) -> None:
    for name, leases in found.items():
        coordination = client.CoordinationV1Api(admin[name].api_client)
        for item in leases:
            ns, lease = item.split("/")
            with contextlib.suppress(Exception):
                coordination.delete_namespaced_lease(lease, ns)


def _remove(admin, found: dict[str, list[str]]) -> None:
    for name, pods in found.items():
        for item in pods:
            ns, pod = item.split("/")
            with contextlib.suppress(Exception):
                admin[name].delete_namespaced_pod(pod, ns, grace_period_seconds=0)
    deadline = time.monotonic() + 60  # Kueue drops its finalizer, then the pod goes
    while provider_pods(admin) and time.monotonic() < deadline:
        time.sleep(0.2)


@pytest.fixture
def no_leaks(admin) -> Iterator[None]:
    """Fail the test when any provider pod is left on any cluster afterwards (then clean up,
    so that one test's leak is reported once, by that test)."""
    _remove(admin, provider_pods(admin))  # an earlier test already failed for these
    _forget(admin, provider_leases(admin, tombstones=True))
    yield
    deadline = time.monotonic() + 20
    left = provider_pods(admin)
    while left and time.monotonic() < deadline:  # deletions take a moment on KWOK
        time.sleep(0.2)
        left = provider_pods(admin)
    _remove(admin, left)
    claims = provider_leases(admin)
    _forget(admin, provider_leases(admin, tombstones=True))
    assert not left, f"provider pods left on clusters: {left}"
    assert not claims, f"claim Leases left on clusters: {claims}"


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    """Poll the API until predicate() is truthy; fail with `what` after the deadline."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except urllib3.exceptions.HTTPError as exc:  # a call that timed out or lost its
            last = exc                                # connection: ask again until the deadline
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")
