"""High availability on the production-shaped Airflow (issue 13): components die, work goes on.

Each test kills a real process with SIGKILL (a lost machine, no clean-up) and checks, from the
apiservers' watch events, that the task never had two live pods. A killed component is started
again afterwards (the ``af`` fixture restarts the dead), as a deployment's supervisor would.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from datetime import datetime

import pytest

from scripts import production
from scripts.scenario import Shape, run_scenario, wait_for
from tests.e2e.conftest import SHAPE
from tests.helpers.podwatch import PodRecorder

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(SHAPE is not Shape.PRODUCTION,
                       reason="needs the production shape: two of each component"),
]
CLUSTERS = ("rise", "bair")


@pytest.fixture
def af(airflow_server):
    """The production-shaped Airflow with every component running (earlier tests killed
    some); what the test kills is started again after it."""
    airflow_server.start()
    yield airflow_server
    airflow_server.start()


def finished(af, dag_id: str, run: str, timeout: float = 240) -> str:
    wait_for(lambda: af.run_state(dag_id, run) in ("success", "failed"), timeout,
             f"{dag_id} finished", interval=0.5)
    return af.run_state(dag_id, run)


def running(af, dag_id: str, task_id: str) -> str | None:
    """The triggerer running the task's trigger."""
    return next(iter(production.triggerers_running(af, dag_id, task_id)), None)


def heir_of(af, victim: str, dag_id: str, task_id: str) -> str | None:
    """A triggerer running the task's trigger that is not the killed (or frozen) one."""
    return next((n for n in production.triggerers_running(af, dag_id, task_id) if n != victim),
                None)


def trigger_starts(af, dag_id: str, run_id: str, task_id: str) -> list[float]:
    """When each triggerer started the task's trigger: the first line of each trigger log."""
    folder = af.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
    starts = []
    for log in folder.glob("*.trigger.*.log"):
        stamp = json.loads(log.read_text().splitlines()[0])["timestamp"]
        starts.append(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())
    return sorted(starts)


def test_a_killed_triggerer_hands_the_trigger_over_and_the_task_finishes(
        af, admin, no_leaks):
    with PodRecorder(admin, CLUSTERS, "skyshare.dev/dag-id=skyshare_job") as pods:
        run = af.trigger("skyshare_job", {"gpus": "T4:1", "duration": "45s"})
        victim = wait_for(lambda: running(af, "skyshare_job", "job"), 120,
                          "a triggerer running the task's trigger")
        killed_at = time.time()
        production.kill(af, victim)
        heir = wait_for(lambda: heir_of(af, victim, "skyshare_job", "job"), 120,
                        "another triggerer running the trigger")
        takeover = time.time() - killed_at
        assert heir.startswith("triggerer-rise-"), (victim, heir)  # rise's team: rise's
        print(f"\ntriggerer takeover: kill -9 {victim} -> {heir} following the pod in "
              f"{takeover:.1f}s")
        assert finished(af, "skyshare_job", run) == "success"
    timeline = af.xcom("skyshare_job", run, "job")
    assert [(a["number"], a["outcome"]) for a in timeline] == [(1, "Succeeded")]
    assert len(pods.created()) == 1, pods.created()
    assert pods.most_live_at_once()[0] == 1


def test_preempted_while_the_trigger_changes_hands_the_work_moves_once(
        af, admin, admin_pods, no_leaks):
    killed: list[str] = []

    def kill_the_follower():  # romil-train runs on bair as a borrower; abbeel comes next
        victim = wait_for(lambda: running(af, "rise_user", "romil-train"), 60,
                          "the triggerer following romil-train")
        production.kill(af, victim)
        killed.append(victim)

    with PodRecorder(admin, CLUSTERS, "skyshare.dev/task-id=romil-train") as pods:
        result = run_scenario(af, admin_pods, {"romil": "30s", "abbeel": "5s"},
                              before_abbeel=kill_the_follower)
    print(result.table())
    assert killed and set(result.states.values()) == {"success"}, result.states
    train = result.timelines["romil-train"]
    assert [(a["cluster"], a["tier"]) for a in train] == [("bair", "borrower"),
                                                          ("rise", "owner")]
    # Preempted while no triggerer followed it: the heir finds the pod gone, and its Events
    # still say who took the GPUs (issue 14, acceptance 3).
    assert (train[0]["outcome"], train[1]["outcome"]) == ("Preempted", "Succeeded"), train
    # abbeel's task path while its pod exists; once it finished and went, the uid Kueue named
    assert train[0]["preempted_by"].startswith(("bair_user/abbeel/", "pod uid ")), train[0]
    assert "via kueue (reclamation within the cohort)" in train[0]["preempted_by"], train[0]
    assert [a["number"] for a in train] == [1, 2]
    assert len(pods.created()) == 2, pods.created()  # moved once, never placed twice
    most, which = pods.most_live_at_once()
    assert most == 1, which
    # ... and the preemption came while nobody followed the pod: before the heir started.
    evicted = next(end for name, _, end in pods.intervals().values() if name.startswith("bair/"))
    heir_started = trigger_starts(af, "rise_user", result.runs["rise_user"], "romil-train")[-1]
    assert evicted is not None and evicted < heir_started, (evicted, heir_started)


def test_a_worker_killed_between_pod_create_and_defer_leaves_one_pod(
        af, admin, no_leaks):
    """bair_slow_defer's first try pauses after creating its pod; its Celery worker dies
    there. Airflow fails the try (no heartbeat) and retries it on the other worker, which
    deletes the first try's pod before placing its own."""
    with PodRecorder(admin, CLUSTERS, "skyshare.dev/dag-id=bair_slow_defer") as pods:
        run = af.trigger("bair_slow_defer")
        wait_for(lambda: pods.created(), 120, "the first try's pod created")
        pid = wait_for(lambda: (af.db("SELECT pid FROM task_instance WHERE dag_id = ? AND "
                                      "run_id = ? AND task_id = 'job'", "bair_slow_defer",
                                      run) or [[None]])[0][0], 60, "the task's process id")
        worker = production.component_of(af, pid)
        assert worker and worker.startswith("worker-"), (pid, worker)
        killed_at = time.time()
        production.kill(af, worker)
        print(f"\nkilled {worker} (task process {pid}) after its pod was created")
        assert finished(af, "bair_slow_defer", run, timeout=300) == "success"
        retried = max(start for _, start, _ in pods.intervals().values())
        print(f"the retry's pod was created {retried - killed_at:.1f}s after the kill")
    tries = af.db("SELECT try_number FROM task_instance WHERE dag_id = ? AND run_id = ?",
                  "bair_slow_defer", run)
    assert tries == [(2,)]
    created = pods.created()
    assert len(created) == 2 and {n.split("-t")[-1][0] for n in created} == {"1", "2"}, created
    most, which = pods.most_live_at_once()
    assert most == 1, which
    # the first try's (10-minute) pod was ended by the retry, before the retry placed its own
    first, second = sorted(pods.intervals().values(), key=lambda iv: iv[1])
    assert "-t1-" in first[0] and "-t2-" in second[0], (first, second)
    assert first[2] is not None and first[2] <= second[1], (first, second)


def test_a_frozen_triggerer_that_wakes_after_the_handover_keeps_its_hands_off(
        af, admin, no_leaks):
    """SIGSTOP the triggerer following a pod until another has taken the trigger over, then
    SIGCONT it: Airflow cancels its stale copy (calling on_kill as for a user's action), and
    that copy must neither delete the pod nor place the work anywhere."""
    with PodRecorder(admin, CLUSTERS, "skyshare.dev/dag-id=skyshare_job") as pods:
        run = af.trigger("skyshare_job", {"gpus": "T4:1", "duration": "60s"})
        victim = wait_for(lambda: running(af, "skyshare_job", "job"), 120,
                          "a triggerer running the task's trigger")
        own_log = af.home / f"{victim}.log"
        own_from = own_log.stat().st_size
        production.signal_all(af, victim, signal.SIGSTOP)
        try:
            heir = wait_for(lambda: heir_of(af, victim, "skyshare_job", "job"), 120,
                            "another triggerer running the trigger")
        finally:
            production.signal_all(af, victim, signal.SIGCONT)
        wait_for(lambda: victim not in production.triggerers_running(af, "skyshare_job", "job"),
                 60, f"{victim} dropping its stale copy")

        def stepped_down() -> bool:
            """The stale copy's on_kill said so: in the trigger's log, or (the decision may
            outlive the trigger, whose log Airflow then closes) in the triggerer's own."""
            trigger_logs = "".join(p.read_text() for p in (
                af.home / "logs" / "dag_id=skyshare_job" / f"run_id={run}").rglob(
                "*.trigger.*.log"))
            with open(own_log, "rb") as own:
                own.seek(own_from)
                said = trigger_logs + own.read().decode(errors="replace")
            return "handed to another triggerer, which follows the pod; not deleting it" in said

        wait_for(stepped_down, 60, f"{victim}'s on_kill leaving the pod to {heir}")
        print(f"\n{victim} frozen; {heir} took the trigger over; {victim} woke and stepped down")
        assert finished(af, "skyshare_job", run) == "success"
    timeline = af.xcom("skyshare_job", run, "job")
    assert [(a["number"], a["outcome"]) for a in timeline] == [(1, "Succeeded")]
    assert len(pods.created()) == 1 and pods.most_live_at_once()[0] == 1, pods.created()


def test_a_triggerer_frozen_during_a_preemption_wakes_and_creates_nothing(
        af, admin, admin_pods, no_leaks):
    """The follower of romil-train is frozen (SIGSTOP); abbeel preempts romil-train; another
    rise triggerer takes the trigger over and moves the work; only then is the frozen one
    woken. It saw the same preemption and would place the work too: its claim on the next
    attempt is taken, so it follows the heir's attempt (or Airflow cancels it first).
    Exactly one replacement either way (issue 14, acceptance 2)."""
    frozen: list[str] = []
    thawed = threading.Event()

    def thaw_after_the_move() -> None:
        try:
            wait_for(lambda: heir_of(af, frozen[0], "rise_user", "romil-train"), 120,
                     "another triggerer following romil-train")
            wait_for(lambda: [n for n in pods.created() if n.endswith("-a2")], 120,
                     "the heir's attempt 2")
        finally:
            production.signal_all(af, frozen[0], signal.SIGCONT)
            thawed.set()

    def freeze_the_follower():
        victim = wait_for(lambda: running(af, "rise_user", "romil-train"), 60,
                          "the triggerer following romil-train")
        production.signal_all(af, victim, signal.SIGSTOP)
        frozen.append(victim)
        threading.Thread(target=thaw_after_the_move, daemon=True).start()

    try:
        with PodRecorder(admin, CLUSTERS, "skyshare.dev/task-id=romil-train") as pods:
            result = run_scenario(af, admin_pods, {"romil": "40s", "abbeel": "5s"},
                                  before_abbeel=freeze_the_follower)
    finally:
        if frozen and not thawed.wait(180):
            production.signal_all(af, frozen[0], signal.SIGCONT)
    print(result.table())
    assert frozen and thawed.is_set() and set(result.states.values()) == {"success"}
    train = result.timelines["romil-train"]
    assert [(a["number"], a["cluster"], a["outcome"]) for a in train] == [
        (1, "bair", "Preempted"), (2, "rise", "Succeeded")], train
    assert len(pods.created()) == 2, pods.created()  # one replacement, by one follower
    assert pods.most_live_at_once()[0] == 1
    # how the woken copy stepped down: it lost the claim, or Airflow cancelled it first
    logs = "".join(p.read_text() for p in (af.home / "logs" / "dag_id=rise_user" /
                                           f"run_id={result.runs['rise_user']}").rglob(
        "*.trigger.*.log"))
    stepped = [how for how in ("by another follower", "handed to another triggerer")
               if how in logs]
    print(f"\nthe woken copy of {frozen[0]} stepped down: {stepped}")
    assert stepped, logs[-3000:]


def test_a_scheduler_killed_mid_scenario_the_scenario_completes(
        af, admin_pods, no_leaks):
    result = run_scenario(af, admin_pods, {"romil": "20s", "abbeel": "5s"},
                          before_abbeel=lambda: production.kill(af, "scheduler-1"))
    assert "scheduler-1" in production.dead(af)
    assert set(result.states.values()) == {"success"}, result.states
    assert [a["outcome"] for a in result.timelines["romil-train"]][-1] == "Succeeded"
