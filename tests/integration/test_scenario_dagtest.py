"""The seed scenario through dag.test() on the real sandbox clusters (issue: provider core).

romil -> rise (owner); romil-train -> bair (borrower, rise full); abbeel -> bair (owner)
preempts romil-train, which is placed again and succeeds with both attempts in its timeline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from tests.helpers.fixtures import wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _owner_fleet() -> str:
    """dags/fleet.yaml with policy.identity: owner. dag.test() runs a task with no DAG bundle
    (Airflow 3.3.2 gives it none), so Airflow cannot say its org: the single-team mode,
    which believes the DAG's org= and checks its owner, is what dag.test() can use."""
    text = (ROOT / "dags" / "fleet.yaml").read_text()
    assert "identity: airflow" in text
    path = Path(os.environ["AIRFLOW_HOME"]) / "fleet-owner-identity.yaml"
    path.write_text(text.replace("identity: airflow", "identity: owner"))
    return str(path)


FLEET = _owner_fleet()
JOB = str(Path(__file__).with_name("dagtest_job.py"))


def bundle_env() -> dict[str, str]:
    """dag.test() needs its DAG in a bundle: one per org (rise, bair), not the examples."""
    root = os.path.join(os.environ["AIRFLOW_HOME"], "it-bundles")
    bundles = [{"name": org, "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                "kwargs": {"path": os.path.join(root, org)}} for org in ("rise", "bair")]
    for org in ("rise", "bair"):
        os.makedirs(os.path.join(root, org), exist_ok=True)
    return {"SKYSHARE_IT_BUNDLES": root,
            "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundles),
            "AIRFLOW__SKYSHARE__FLEET_FILE": FLEET}


class Job:
    """One dag.test() process, started ahead and run on `go()`: the scenario's timing must not
    depend on how long a process takes to start on a busy machine."""

    def __init__(self, task_id: str, org: str, owner: str, duration: str, **extra: str) -> None:
        args = [sys.executable, JOB, "--task-id", task_id, "--org", org, "--owner", owner,
                "--fleet", FLEET, "--duration", duration,
                "--dag-id", f"it_{task_id.replace('-', '_')}_{uuid.uuid4().hex[:6]}"]
        for key, value in extra.items():
            args += [f"--{key.replace('_', '-')}", value]
        env = {**os.environ, **bundle_env()}
        self.name = task_id
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def go(self, timeout: float = 120) -> Job:
        wait_for(lambda: "READY" in self.lines or self.proc.poll() is not None, timeout,
                 f"{self.name}'s process started")
        assert "READY" in self.lines, self.output()
        self.proc.stdin.write("go\n")
        self.proc.stdin.close()
        return self

    def output(self) -> str:
        return f"{self.name} (exit {self.proc.returncode}):\n" + "\n".join(self.lines[-200:])

    def finish(self, timeout: float = 180) -> dict:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"job still running after {timeout:g}s: {self.output()}") from None
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            self._reader.join(10)
        for line in self.lines:
            if line.startswith("RESULT "):
                return json.loads(line[len("RESULT "):])
        raise AssertionError(f"job printed no result: {self.output()}")


@pytest.fixture
def jobs():
    """Every job a test started is ended with it; a failure shows what each job printed."""
    started: list[Job] = []

    def start(*args, **kwargs) -> Job:
        started.append(Job(*args, **kwargs))
        return started[-1]

    yield start
    for job in started:  # shown by pytest when the test failed
        if job.proc.poll() is None:
            job.proc.kill()
            job.proc.wait(10)
        print(job.output())


def pod_of(admin, cluster: str, task_id: str, phase: str | None = "Running"):
    pods = admin[cluster].list_pod_for_all_namespaces(  # each org's namespace
        label_selector=f"skyshare.dev/task-id={task_id}").items
    for p in pods:
        if phase is None or p.status.phase == phase:
            return p
    return None


# romil keeps rise full while romil-train is placed, and romil-train still runs when abbeel is
# placed. dag.test() itself takes seconds to start a task after "go" (11-21 s seen on a busy
# machine), so both run long enough to cover that.
ROMIL, TRAIN = "45s", "60s"


def test_seed_scenario(admin, airflow_db, kube_env, no_leaks, jobs):
    romil, train = jobs("romil", "rise", "romil", ROMIL), jobs("romil-train", "rise", "romil", TRAIN)
    abbeel = jobs("abbeel", "bair", "abbeel", "5s")
    romil.go()
    wait_for(lambda: pod_of(admin, "rise", "romil"), 90, "romil running on rise")

    train.go()
    pod = wait_for(lambda: pod_of(admin, "bair", "romil-train"), 90, "romil-train on bair")
    assert pod.metadata.labels["skyshare.dev/tier"] == "borrower"
    assert pod.metadata.labels["kueue.x-k8s.io/priority-class"] == "low-priority"

    abbeel.go()
    wait_for(lambda: pod_of(admin, "bair", "abbeel"), 90, "abbeel running on bair")
    wait_for(lambda: pod_of(admin, "rise", "romil-train", phase=None), 30,
             "romil-train placed again on rise")

    results = {job.name: job.finish() for job in (romil, abbeel, train)}
    for name, result in results.items():
        assert result["state"] == "success", (name, result)

    def attempts(name):
        return results[name]["xcom"]["return_value"]

    assert [(a["cluster"], a["tier"], a["outcome"]) for a in attempts("romil")] == [
        ("rise", "owner", "Succeeded")]
    assert [(a["cluster"], a["tier"], a["outcome"]) for a in attempts("abbeel")] == [
        ("bair", "owner", "Succeeded")]
    train_attempts = attempts("romil-train")
    assert [(a["cluster"], a["tier"], a["outcome"]) for a in train_attempts] == [
        ("bair", "borrower", "Preempted"), ("rise", "owner", "Succeeded")]
    assert "kueue" in train_attempts[0]["preempted_by"]
    assert train_attempts[0]["reason"] == "WorkloadEvictedDueToPreempted"


def test_max_preemptions_exceeded_fails_clearly(admin, airflow_db, kube_env, no_leaks, jobs):
    romil = jobs("romil", "rise", "romil", ROMIL)
    train = jobs("romil-train", "rise", "romil", TRAIN, max_preemptions="0")
    abbeel = jobs("abbeel", "bair", "abbeel", "3s")
    romil.go()
    wait_for(lambda: pod_of(admin, "rise", "romil"), 90, "romil running on rise")
    train.go()
    wait_for(lambda: pod_of(admin, "bair", "romil-train"), 90, "romil-train on bair")
    abbeel.go()
    result = train.finish()
    assert result["state"] == "failed"
    timeline = result["xcom"]["skyshare_timeline"]
    assert [(a["cluster"], a["outcome"]) for a in timeline] == [("bair", "Preempted")]
    assert abbeel.finish()["state"] == "success"
    assert romil.finish()["state"] == "success"
