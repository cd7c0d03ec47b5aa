"""One task's execute() as an Airflow worker runs it, in a fresh process: for (h) and (i).

A worker runs each task in a process of its own, after the DAG file is imported: the
operator's module is loaded, the rest (the Kubernetes client's import, the kubeconfig, TLS to
every cluster) is the task's to pay. So each sample is a fresh `python -m benchmarks.worker`
that imports both operators, builds the context Airflow hands execute() (the task instance
and dag run; Airflow's parts, not Kubernetes': the clusters are the sandbox's real ones),
calls execute() and stops at its deferral. It prints when execute() began, the pod it made,
and the bytes Airflow would store for the deferred task: the trigger row's kwargs (Airflow's
own task_runner._defer_task, then the execution API's json.dumps of them), the task
instance's next_kwargs, and every XCom the task pushed (serialised as the SDK does).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

NS = "skyshare-rise"  # the task is rise's: its namespace on every cluster
GPU_LIMITS = {"nvidia.com/gpu": "2"}
DURATION = {"sandbox.skyshare.dev/duration": "600s"}


@dataclass
class TaskInstance:
    """What execute() reads of the task instance a worker gets, and the XComs it pushes."""

    dag_id: str
    task_id: str
    run_id: str
    bundle: str
    try_number: int = 1
    map_index: int = -1
    pushed: dict[str, Any] = field(default_factory=dict)

    @property
    def bundle_instance(self) -> Any:
        return SimpleNamespace(name=self.bundle)

    @property
    def task(self) -> Any:  # task_runner._defer_task reads its queue
        return SimpleNamespace(queue="default")

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


def context_of(ti: TaskInstance) -> dict[str, Any]:
    return {"ti": ti, "run_id": ti.run_id, "dag": SimpleNamespace(parent_dag=None),
            "dag_run": SimpleNamespace(team_name=None)}


def json_bytes(value: Any) -> int:
    return len(json.dumps(value).encode())


def xcom_bytes(value: Any) -> int:
    """An XCom value as the SDK serialises it (XCom.serialize_value) and the DB keeps it."""
    from airflow.sdk.serde import serialize

    return json_bytes(serialize(value))


def deferral_bytes(deferred: Any, ti: TaskInstance) -> dict[str, int]:
    """The trigger row's kwargs column and the task instance's next_kwargs, as Airflow 3.3
    writes them: the worker serialises (task_runner._defer_task), the execution API stores
    json.dumps of the dict (routes/task_instances.py: no Fernet for a dict from a worker)."""
    import structlog
    from airflow.sdk.execution_time.task_runner import _defer_task

    msg, _ = _defer_task(deferred, ti, structlog.get_logger())
    return {"trigger_kwargs": json_bytes(msg.trigger_kwargs),
            "next_kwargs": json_bytes(msg.next_kwargs)}


def skyshare_operator(fleet_file: str) -> Any:
    from airflow_provider_skyshare.operators import MultiClusterGpuOperator

    return MultiClusterGpuOperator(task_id="first", gpus="T4:2", image="busybox",
                                   fleet_file=fleet_file, annotations=DURATION, get_logs=False,
                                   deferrable=True)


def kpo_operator(kubeconfig: str, conn_id: str | None) -> Any:
    """The baseline: KubernetesPodOperator on rise's own cluster as rise (owner tier), by
    kubeconfig file (as the preemption benchmark's DAG) or by an Airflow connection."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    where = ({"kubernetes_conn_id": conn_id} if conn_id else
             {"config_file": kubeconfig, "cluster_context": "rise@rise", "in_cluster": False})
    return KubernetesPodOperator(
        task_id="first", name="kpo-first", namespace=NS, image="busybox", **where,
        labels={"kueue.x-k8s.io/queue-name": "skyshare-owner",
                "kueue.x-k8s.io/priority-class": "high-priority"},
        annotations=DURATION, priority_class_name="high-priority",
        node_selector={"nvidia.com/gpu.product": "Tesla-T4"},
        container_resources=k8s.V1ResourceRequirements(limits=GPU_LIMITS, requests=GPU_LIMITS),
        get_logs=False, deferrable=True, on_finish_action="delete_pod")


def final_timeline_bytes(trigger_kwargs: dict[str, Any]) -> int:
    """The XCom the trigger writes at the end (the timeline, as return_value): the deferred
    attempt, finished as a success."""
    from airflow_provider_skyshare.timeline import Timeline

    timeline = Timeline.from_list(trigger_kwargs["state"]["timeline"])
    last = timeline.last
    assert last is not None, "deferred without an attempt"
    done = replace(last, started_at=last.placed_at + 1, ended_at=last.placed_at + 60,
                   outcome="Succeeded", reason="Completed", exit_code=0)
    return xcom_bytes(replace(timeline, attempts=(*timeline.attempts[:-1], done)).to_list())


def execute_once(variant: str, run_id: str, fleet_file: str, kubeconfig: str,
                 conn_id: str | None) -> tuple[dict[str, Any], Any]:
    """Runs in the measured process: execute() to its deferral; the report and the trigger."""
    from airflow.sdk.exceptions import TaskDeferred

    op = skyshare_operator(fleet_file) if variant == "skyshare" else kpo_operator(kubeconfig,
                                                                                   conn_id)
    ti = TaskInstance(f"bench_first_{variant}", "first", run_id, bundle="rise")
    cpu = time.process_time()
    started = time.time()
    try:
        op.execute(context_of(ti))
    except TaskDeferred as deferred:
        ended = time.time()
        cpu = time.process_time() - cpu
        stored = deferral_bytes(deferred, ti)
        trigger = deferred.trigger
        kwargs = trigger.serialize()[1]
    else:
        raise RuntimeError(f"{variant}: execute() returned without deferring")
    pod = ti.pushed.get("skyshare_placement") or {
        "pod": ti.pushed["pod_name"], "namespace": ti.pushed["pod_namespace"], "cluster": "rise"}
    out = {"variant": variant, "started_at": started, "deferred_at": ended,
           "cpu_ms_to_deferral": cpu * 1000, "pod": pod["pod"],
           "namespace": pod["namespace"], "cluster": pod["cluster"], **stored,
           "xcom": {k: xcom_bytes(v) for k, v in ti.pushed.items()}}
    if variant == "skyshare":
        out["xcom_at_end"] = {"return_value": final_timeline_bytes(kwargs)}
    return out, trigger


async def follow(trigger: Any) -> None:
    """What the triggerer does next: run the trigger (here until this process is ended)."""
    async for event in trigger.run():
        print("EVENT " + json.dumps(event.payload, default=str)[:2000], flush=True)
        return


def start_follower(run_id: str, fleet_file: str, kubeconfig: str,
                   log: Path | None = None) -> subprocess.Popen:
    """A worker that places the task, then follows it as a triggerer would, until killed;
    its first line (RESULT, as run_child's) comes once the first attempt exists. Its log (one
    line per decision) goes to `log`."""
    args = [sys.executable, "-m", "benchmarks.worker", "skyshare", run_id, fleet_file,
            kubeconfig, "--follow"]
    with open(log or os.devnull, "w") as err:  # the child keeps its own copy
        return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, text=True,
                                cwd=Path(__file__).resolve().parents[1],
                                env={**os.environ, "AIRFLOW__SKYSHARE__FLEET_FILE": fleet_file,
                                     "KUBECONFIG": kubeconfig})


def result_line(proc: subprocess.Popen) -> dict[str, Any]:
    """The RESULT line of a follower (blocking until it is printed)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"follower exited with {proc.wait()} before placing")


def run_child(variant: str, run_id: str, fleet_file: str, kubeconfig: str,
              conn_id: str | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:
    """One sample in a fresh process; its RESULT line."""
    args = [sys.executable, "-m", "benchmarks.worker", variant, run_id, fleet_file, kubeconfig]
    if conn_id:
        args += ["--conn-id", conn_id]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1],
                          env={**os.environ, "AIRFLOW__SKYSHARE__FLEET_FILE": fleet_file,
                               "KUBECONFIG": kubeconfig, **(env or {})})
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"worker {variant} failed:\n{proc.stdout[-2000:]}\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("variant", choices=("skyshare", "kpo"))
    p.add_argument("run_id")
    p.add_argument("fleet_file")
    p.add_argument("kubeconfig")
    p.add_argument("--conn-id")
    p.add_argument("--follow", action="store_true", help="then run the trigger until killed")
    a = p.parse_args()
    # What the DAG file's import has done before a worker calls execute(): both operators'
    # modules are loaded (the Kubernetes clients they import lazily are the task's cost).
    import airflow.providers.cncf.kubernetes.operators.pod  # noqa: F401

    import airflow_provider_skyshare.operators  # noqa: F401

    result, deferred_to = execute_once(a.variant, a.run_id, a.fleet_file, a.kubeconfig,
                                       a.conn_id)
    print("RESULT " + json.dumps(result), flush=True)
    if a.follow:
        import asyncio

        asyncio.run(follow(deferred_to))
