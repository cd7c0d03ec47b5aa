"""Faults survived through a real scheduler and triggerer (issue: reliability)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from scripts.scenario import wait_for

pytestmark = pytest.mark.e2e


def job_pods(admin, cluster: str) -> list:
    return admin[cluster].list_namespaced_pod("skyshare-rise",  # skyshare_job is rise's
                                              label_selector="skyshare.dev/task-id=job").items


def running_on(admin, cluster: str):
    return [p for p in job_pods(admin, cluster) if p.status.phase == "Running"]


def trigger_started(af, run: str) -> bool:
    return any("starting" in p.read_text(errors="replace")
               for p in (af.home / "logs").rglob("*.trigger.*.log") if run in str(p))


def test_triggerer_killed_mid_watch_task_completes_one_pod_per_attempt(
        airflow_server, admin, no_leaks):
    af = airflow_server
    run = af.trigger("skyshare_job", {"gpus": "T4:1",
                                      "duration": "25s"})
    wait_for(lambda: running_on(admin, "rise"), 90, "job running on rise")
    wait_for(lambda: af.task_states("skyshare_job", run).get("job") == "deferred", 30,
             "task deferred")
    victims = af.triggerer_pids("rise")  # skyshare_job is rise's: rise's triggerer runs it
    assert victims, "no triggerer process of team rise found"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    # a dead triggerer is not restarted for us: start a new one like an operator would
    af.start_triggerer("rise")  # it serves the following tests; stopped with Airflow
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
            for e in admin[name].list_namespaced_event("skyshare-rise").items
            if e.involved_object.name.startswith(prefix)}
    assert seen == {pod}, seen


def test_mark_failed_from_the_api_deletes_the_pod(airflow_server, admin, no_leaks):
    af = airflow_server
    run = af.trigger("skyshare_job", {"gpus": "T4:1",
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


def skyshare_cli(af, *args: str, team: str | None = None) -> subprocess.CompletedProcess:
    """The CLI as the platform runs it; with ``team``, as that team's operator, who holds
    its connections (deleting its pods needs them: the clusters' own only read)."""
    from airflow_provider_skyshare.sandbox.connections import for_team_process

    env = af.env()
    if team:
        env.update(for_team_process(af.connections, team))
    return subprocess.run([os.path.join(os.path.dirname(sys.executable), "skyshare"), *args],
                          env=env, capture_output=True, text=True, timeout=60)


def test_orphans_finds_the_pod_of_a_task_marked_failed_before_its_trigger_ran(
        airflow_server, admin, no_leaks):
    """The known gap of mark-failed (no triggerer ran the trigger yet), made certain by
    stopping the triggerer, and closed by `skyshare orphans --delete`."""
    af = airflow_server
    stopped = af.triggerer_pids("rise")  # skyshare_job is rise's
    assert stopped, "no triggerer process of team rise found"
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    try:
        run = af.trigger("skyshare_job", {"gpus": "T4:1",
                                          "duration": "300s"})
        wait_for(lambda: af.task_states("skyshare_job", run).get("job") == "deferred", 120,
                 "task deferred")
        pods = job_pods(admin, "rise")
        assert len(pods) == 1
        trigger_id = af.db("SELECT trigger_id FROM task_instance WHERE dag_id = ? AND "
                           "run_id = ? AND task_id = 'job'", "skyshare_job", run)[0][0]
        assert trigger_id is not None
        name = pods[0].metadata.name
        assert skyshare_cli(af, "orphans").stdout.startswith("no orphaned pods among 1 ")
        af.patch_task("skyshare_job", run, "job", "failed")
        wait_for(lambda: af.task_states("skyshare_job", run).get("job") == "failed", 30,
                 "task failed")
        assert [p.metadata.name for p in job_pods(admin, "rise")] == [name]  # nobody deletes it
        listed = skyshare_cli(af, "orphans", "--json")
        assert listed.returncode == 0, listed.stderr
        assert [(o["cluster"], o["pod"], o["why"]) for o in json.loads(listed.stdout)["orphans"]
                ] == [("rise", name, "the task is failed")]
        shown = skyshare_cli(af, "orphans")
        assert shown.returncode == 0 and name in shown.stdout, shown.stderr
        print(shown.stdout + shown.stderr)
        deleted = skyshare_cli(af, "orphans", "--delete", team="rise")
        assert deleted.returncode == 0, deleted.stderr
        assert name in deleted.stdout and "deleted" in deleted.stdout
        wait_for(lambda: not job_pods(admin, "rise"), 30, f"orphan {name} deleted")
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    # The resumed triggerer must not bring the failed task back to life: wait until it has
    # dealt with the trigger row (gone from Airflow's DB), then no pod may exist.
    wait_for(lambda: not af.db("SELECT id FROM trigger WHERE id = ?", trigger_id), 60,
             "the failed task's trigger cleaned up")
    assert not job_pods(admin, "rise") and not job_pods(admin, "bair")
    # ... nor did a pod exist for a moment: the apiservers' events name every pod there was.
    prefix = name[: name.rindex("-t") + 2]
    seen = {e.involved_object.name for c in ("rise", "bair")
            for e in admin[c].list_namespaced_event("skyshare-rise").items
            if e.involved_object.name.startswith(prefix)}
    assert seen == {name}, seen
    logs = [p.read_text(errors="replace") for p in (af.home / "logs").rglob("*.trigger.*.log")
            if run in str(p)]
    print("trigger started after the mark-failed:", bool(logs),
          "; abandoned:", any("no longer deferred" in text for text in logs))
