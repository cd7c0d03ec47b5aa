"""Faults survived through a real scheduler and triggerer (issue: reliability)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from scripts.scenario import wait_for

pytestmark = pytest.mark.e2e


def job_pods(admin, cluster: str) -> list:
    return admin[cluster].list_namespaced_pod("skyshare",
                                              label_selector="skyshare.dev/task-id=job").items


def running_on(admin, cluster: str):
    return [p for p in job_pods(admin, cluster) if p.status.phase == "Running"]


def trigger_started(af, run: str) -> bool:
    return any("starting" in p.read_text(errors="replace")
               for p in (af.home / "logs").rglob("*.trigger.*.log") if run in str(p))


def _triggerer_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "airflow triggerer"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_triggerer_killed_mid_watch_task_completes_one_pod_per_attempt(
        airflow_server, admin, no_leaks):
    af = airflow_server
    run = af.trigger("skyshare_job", {"org": "rise", "user": "romil", "gpus": "T4:1",
                                      "duration": "25s"})
    wait_for(lambda: running_on(admin, "rise"), 90, "job running on rise")
    wait_for(lambda: af.task_states("skyshare_job", run).get("job") == "deferred", 30,
             "task deferred")
    victims = _triggerer_pids()
    assert victims, "no triggerer process found"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    # standalone does not restart a dead component: start a new triggerer like an operator would
    log = open(af.home / "triggerer2.log", "ab")  # noqa: SIM115
    new = subprocess.Popen([os.path.join(os.path.dirname(os.sys.executable), "airflow"),
                            "triggerer"], env=af.env(), stdout=log, stderr=subprocess.STDOUT,
                           start_new_session=True)
    af.extra_pids.append(new.pid)  # it serves the following tests; stopped with Airflow
    wait_for(lambda: af.run_state("skyshare_job", run) in ("success", "failed"), 150,
             "run finished after the triggerer restart", interval=0.5)
    assert af.run_state("skyshare_job", run) == "success"
    timeline = af.xcom("skyshare_job", run, "job")
    assert [(a["number"], a["cluster"], a["outcome"]) for a in timeline] == [
        (1, "rise", "Succeeded")]
    # Exactly one pod was ever created for this task (no duplicate after the restart): the
    # apiserver's own events name every pod that existed, on every cluster.
    pod = timeline[0]["pod"]
    prefix = pod[: pod.rindex("-a") + 2]
    seen = {e.involved_object.name for name in ("rise", "bair")
            for e in admin[name].list_namespaced_event("skyshare").items
            if e.involved_object.name.startswith(prefix)}
    assert seen == {pod}, seen


def test_mark_failed_from_the_api_deletes_the_pod(airflow_server, admin, no_leaks):
    af = airflow_server
    run = af.trigger("skyshare_job", {"org": "rise", "user": "romil", "gpus": "T4:1",
                                      "duration": "300s"})
    pod = wait_for(lambda: running_on(admin, "rise"), 90, "job running on rise")[0]
    wait_for(lambda: af.task_states("skyshare_job", run).get("job") == "deferred", 30,
             "task deferred")
    # Marked failed once the triggerer runs the trigger (its on_kill deletes the pod). Between
    # deferral and pick-up (about a second) nothing of the task runs anywhere: docs/operations.md.
    wait_for(lambda: trigger_started(af, run), 30, "trigger running in the triggerer")
    started = time.monotonic()
    af.patch_task("skyshare_job", run, "job", "failed")
    wait_for(lambda: not job_pods(admin, "rise"), 30, f"pod {pod.metadata.name} deleted")
    print(f"pod deleted {time.monotonic() - started:.1f}s after mark-failed")
