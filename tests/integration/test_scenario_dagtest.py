"""The seed scenario through dag.test() on the real sandbox clusters (issue: provider core).

romil -> rise (owner); romil-train -> bair (borrower, rise full); abbeel -> bair (owner)
preempts romil-train, which is placed again and succeeds with both attempts in its timeline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.helpers.fixtures import wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
FLEET = str(ROOT / "dags" / "fleet.yaml")
JOB = str(Path(__file__).with_name("dagtest_job.py"))


def start(task_id: str, org: str, owner: str, duration: str, **extra: str) -> subprocess.Popen:
    args = [sys.executable, JOB, "--task-id", task_id, "--org", org, "--owner", owner,
            "--fleet", FLEET, "--duration", duration,
            "--dag-id", f"it_{task_id.replace('-', '_')}_{uuid.uuid4().hex[:6]}"]
    for key, value in extra.items():
        args += [f"--{key.replace('_', '-')}", value]
    # dag.test() needs its DAG in a bundle: a folder of its own, not the examples
    env = {**os.environ,
           "AIRFLOW__CORE__DAGS_FOLDER": os.path.join(os.environ["AIRFLOW_HOME"], "it-dags")}
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=ROOT)


def finish(proc: subprocess.Popen, timeout: float = 180) -> dict:
    out, _ = proc.communicate(timeout=timeout)
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise AssertionError(f"job printed no result (exit {proc.returncode}):\n{out[-4000:]}")


def pod_of(admin, cluster: str, task_id: str, phase: str | None = "Running"):
    pods = admin[cluster].list_namespaced_pod(
        "skyshare", label_selector=f"skyshare.dev/task-id={task_id}").items
    for p in pods:
        if phase is None or p.status.phase == phase:
            return p
    return None


def test_seed_scenario(admin, airflow_db, kube_env, no_leaks):
    romil = start("romil", "rise", "romil", "25s")
    wait_for(lambda: pod_of(admin, "rise", "romil"), 90, "romil running on rise")

    train = start("romil-train", "rise", "romil", "20s")
    pod = wait_for(lambda: pod_of(admin, "bair", "romil-train"), 90, "romil-train on bair")
    assert pod.metadata.labels["skyshare.dev/tier"] == "borrower"
    assert pod.metadata.labels["kueue.x-k8s.io/priority-class"] == "low-priority"

    abbeel = start("abbeel", "bair", "abbeel", "5s")
    wait_for(lambda: pod_of(admin, "bair", "abbeel"), 90, "abbeel running on bair")
    wait_for(lambda: pod_of(admin, "rise", "romil-train", phase=None), 30,
             "romil-train placed again on rise")

    results = {name: finish(p) for name, p in
               (("romil", romil), ("abbeel", abbeel), ("romil-train", train))}
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


def test_max_preemptions_exceeded_fails_clearly(admin, airflow_db, kube_env, no_leaks):
    romil = start("romil", "rise", "romil", "15s")
    wait_for(lambda: pod_of(admin, "rise", "romil"), 90, "romil running on rise")
    train = start("romil-train", "rise", "romil", "60s", max_preemptions="0")
    wait_for(lambda: pod_of(admin, "bair", "romil-train"), 90, "romil-train on bair")
    abbeel = start("abbeel", "bair", "abbeel", "3s")
    result = finish(train)
    assert result["state"] == "failed"
    timeline = result["xcom"]["skyshare_timeline"]
    assert [(a["cluster"], a["outcome"]) for a in timeline] == [("bair", "Preempted")]
    assert finish(abbeel)["state"] == "success"
    assert finish(romil)["state"] == "success"
