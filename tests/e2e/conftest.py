"""A real Airflow (scheduler, triggerer, API server, SQLite) for the e2e tests."""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

import pytest

from scripts.scenario import Airflow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def airflow_server(kube_env):
    af = Airflow(home=Path(tempfile.mkdtemp(prefix="skyshare-e2e-")), port=_free_port(),
                 kubeconfig=kube_env)
    af.start()
    yield af
    af.stop()


@pytest.fixture(scope="session")
def admin_pods(admin):
    def pods(cluster: str, task_id: str):
        found = admin[cluster].list_namespaced_pod(
            "skyshare", label_selector=f"skyshare.dev/task-id={task_id}").items
        return [(p.metadata.name, p.status.phase) for p in found]

    return pods
