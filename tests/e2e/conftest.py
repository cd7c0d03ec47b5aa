"""A real Airflow (scheduler, triggerer, API server, SQLite) for the e2e tests."""

from __future__ import annotations

import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from scripts.scenario import Airflow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ROOT = Path(__file__).resolve().parents[2]


def _bundles(home: Path) -> dict[str, Path]:
    """The example bundles; bair's also holds DAGs that claim rise's identity (bundles/bair)."""
    bundles = {d.name: d for d in sorted((ROOT / "dags").iterdir())
               if d.is_dir() and any(d.glob("*.py"))}
    bair = home / "bundles" / "bair"
    bair.mkdir(parents=True)
    for src in [*bundles["bair"].glob("*.py"), *(HERE / "bundles" / "bair").glob("*.py")]:
        shutil.copy(src, bair / src.name)
    return {**bundles, "bair": bair}


HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def airflow_server(kube_env):
    home = Path(tempfile.mkdtemp(prefix="skyshare-e2e-"))
    af = Airflow(home=home, port=_free_port(), kubeconfig=kube_env, bundles=_bundles(home))
    af.start()
    yield af
    af.stop()


@pytest.fixture(scope="session")
def admin_pods(admin):
    def pods(cluster: str, task_id: str):
        found = admin[cluster].list_pod_for_all_namespaces(  # every org's namespace
            label_selector=f"skyshare.dev/task-id={task_id}").items
        return [(p.metadata.name, p.status.phase) for p in found]

    return pods
