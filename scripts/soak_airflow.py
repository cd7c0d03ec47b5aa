"""`./dev soak --airflow`: the soak through a real, production-shaped Airflow (issue 14).

The in-process soak (scripts/soak.py) drives the supervisor directly and simulates triggerer
kills as cancelled coroutines. This mode runs the same sandbox and cluster faults under the
Airflow of scripts/production.py (PostgreSQL, Redis, Celery, two schedulers, two workers, two
triggerers per team) and injects the process faults for real:

- **triggerer kills**: kill -9 of a team's triggerer and every process it started, started
  again 0-10 s later (Airflow hands its triggers to the team's other triggerer);
- **triggerer freezes**: SIGSTOP for 5-40 s, then SIGCONT. Longer than the health-check
  threshold (20 s here), the triggers are handed over while the frozen copy still holds
  them: two followers of one task, the claim and the tombstones decide.

Each task is a DAG run of ``soak_<org>`` in that org's bundle (an Airflow team), with its
GPUs and duration as params. Its verdict is the task instance's state; its timeline is the
XCom the trigger stores. The report counts the same things as the in-process soak, in
benchmarks/results/soak-airflow.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from scripts.soak import (
    CLUSTERS,
    RESULTS,
    ROOT,
    STATE,
    Outcome,
    Tally,
    analyse,
    inject,
    log,
    markdown,
    report_faults,
    restore,
    sandbox_up,
)

HOME = STATE / "airflow"
DAG = '''"""Soak work of one org: its bundle (an Airflow team) makes the work {org}'s."""
from datetime import datetime

from airflow.sdk import DAG, Param

from airflow_provider_skyshare.operators import MultiClusterGpuOperator

with DAG(dag_id="soak_{org}", start_date=datetime(2026, 1, 1), schedule=None, catchup=False,
         max_active_runs=64, max_active_tasks=64,
         default_args={{"owner": "soak", "retries": 0}},
         params={{"gpus": Param("T4:1", type="string"),
                  "duration": Param("30s", type="string")}}):
    MultiClusterGpuOperator(task_id="work", image="busybox", gpus="{{{{ params.gpus }}}}",
                            annotations={{"sandbox.skyshare.dev/duration":
                                         "{{{{ params.duration }}}}"}},
                            max_preemptions=20, get_logs=False)
'''


def dags_folder(fleet: dict[str, Any]) -> Path:
    """A bundle per org (the team is the org) and the fleet, with the org's identity taken
    from Airflow, as a deployment has it."""
    folder = STATE / "airflow-dags"
    shutil.rmtree(folder, ignore_errors=True)
    for org in CLUSTERS:
        (folder / org).mkdir(parents=True)
        (folder / org / f"soak_{org}.py").write_text(DAG.format(org=org))
    teams = {**fleet, "policy": {**fleet["policy"], "identity": "airflow"},
             "orgs": [{**o, "bundles": [o["name"]]} for o in fleet["orgs"]]}
    (folder / "fleet.yaml").write_text(json.dumps(teams, indent=2))
    return folder


def stop_airflow(af) -> None:
    """Stop what start_airflow started, also half-way (its components, PostgreSQL, Redis)."""
    from scripts.scenario import Airflow, Shape

    if af is None and not (HOME / "pids").exists():
        return  # nothing was started
    (af or Airflow(home=HOME, shape=Shape.PRODUCTION)).stop(purge=True)


def start_airflow(kubeconfig: str):
    from scripts.scenario import Airflow, Shape
    from scripts.services import free_port
    from scripts.soak import FLEET

    old = Airflow(home=HOME, shape=Shape.PRODUCTION)
    if (HOME / "pids").exists() or (HOME / "services.json").exists():
        old.stop(purge=True)  # an interrupted earlier soak
    shutil.rmtree(HOME, ignore_errors=True)
    HOME.mkdir(parents=True)
    af = Airflow(home=HOME, port=free_port(), shape=Shape.PRODUCTION, kubeconfig=kubeconfig,
                 dags_folder=dags_folder(FLEET), teams=CLUSTERS)
    af.start(timeout=600)
    for org in CLUSTERS:
        af.ensure_ready(f"soak_{org}", timeout=300)
    return af


async def triggerer_faults(af, rng: random.Random, until: float, tally: Tally) -> None:
    """One team triggerer at a time, killed or frozen, never both of a team at once."""
    from scripts import production

    while time.time() < until:
        await asyncio.sleep(rng.uniform(20, 50))
        names = sorted(n for n in production.pids(af) if n.startswith("triggerer-")
                       and not n.startswith("triggerer-global"))
        if not names:
            continue
        name = rng.choice(names)
        try:
            if rng.random() < 0.6:
                await _kill(af, name, rng.uniform(0, 10), tally)
            else:
                await _freeze(af, name, rng.uniform(5, 40), tally)
        except LookupError as exc:  # it died on its own meanwhile: the next fault goes on
            log.warning("fault on %s skipped: %s", name, exc)


async def _kill(af, name: str, down: float, tally: Tally) -> None:
    from scripts import production

    log.info("fault: kill -9 %s", name)
    production.kill(af, name)
    tally.triggerer_kills += 1
    try:
        await asyncio.sleep(down)
    finally:  # also when the soak ends meanwhile
        production.launch(af, production.by_name(af, name))


async def _freeze(af, name: str, frozen: float, tally: Tally) -> None:
    from scripts import production

    log.info("fault: %s frozen for %.0f s", name, frozen)
    production.signal_all(af, name, signal.SIGSTOP)
    tally.triggerer_freezes += 1
    try:
        await asyncio.sleep(frozen)
    finally:
        production.signal_all(af, name, signal.SIGCONT)


async def drive(af, args: argparse.Namespace, tally: Tally) -> list[Outcome]:
    rng = random.Random(args.seed)
    until = time.time() + args.minutes * 60
    outages: set[asyncio.Future[None]] = set()
    faults = [asyncio.create_task(inject(random.Random(args.seed + 1), until, tally, outages)),
              asyncio.create_task(triggerer_faults(af, random.Random(args.seed + 2), until,
                                                   tally))]
    runs: dict[tuple[str, str], Outcome] = {}
    try:
        while time.time() < until and len(runs) < args.tasks:
            states = await asyncio.to_thread(task_states, af)
            running = sum(1 for key in runs if states.get(key) not in FINAL)
            for _ in range(max(0, min(args.concurrency - running, args.tasks - len(runs)))):
                org, gpus, seconds = rng.choice(CLUSTERS), rng.choice((1, 2)), rng.randint(15, 60)
                run_id = await asyncio.to_thread(af.trigger, f"soak_{org}", {
                    "gpus": f"T4:{gpus}", "duration": f"{seconds}s"})
                runs[(f"soak_{org}", run_id)] = Outcome(f"soak_{org}/{run_id}", org, gpus)
            await asyncio.sleep(2)
    finally:
        for fault in faults:
            fault.cancel()
        report_faults(await asyncio.gather(*faults, return_exceptions=True))
        tally.down_at_drain = await restore(outages)
    deadline = time.time() + 600
    while time.time() < deadline:  # the work still running ends on its own
        states = await asyncio.to_thread(task_states, af)
        if all(states.get(key) in FINAL for key in runs):
            break
        await asyncio.sleep(3)
    return [await asyncio.to_thread(outcome, af, key, out, states.get(key))
            for key, out in runs.items()]


FINAL = ("success", "failed", "upstream_failed", "skipped")


def task_states(af) -> dict[tuple[str, str], str]:
    rows = af.db("SELECT dag_id, run_id, state FROM task_instance WHERE dag_id LIKE ?",
                 "soak_%")
    return {(dag, run): state or "" for dag, run, state in rows}


def outcome(af, key: tuple[str, str], out: Outcome, state: str | None) -> Outcome:
    """The verdict as Airflow has it, and the timeline the trigger stored."""
    from airflow_provider_skyshare.triggers.pod import TIMELINE_XCOM

    dag_id, run_id = key
    out.status = state if state in FINAL else ""
    out.message = "" if out.status else f"task still {state or 'not started'} at the end"
    xcom_key = "return_value" if state == "success" else TIMELINE_XCOM
    out.attempts = af.xcom(dag_id, run_id, "work", key=xcom_key) or []
    return out


# What the task logs say when two followers of one task met (Airflow names no process in a
# trigger's row: its log is the only witness of a hand-over)
MET = {"handed_over": "handed to another triggerer",
       "stepped_down": "by another follower",
       "read_tombstone": "is a tombstone"}


def met(home: Path) -> dict[str, int]:
    """How many tasks' logs show each meeting (a task counts once per kind)."""
    counts = dict.fromkeys(MET, 0)
    for task in (home / "logs").glob("dag_id=soak_*/run_id=*/task_id=*"):
        text = "".join(p.read_text(errors="replace") for p in task.glob("*.log*"))
        for key, mark in MET.items():
            counts[key] += mark in text
    return counts


def main(args: argparse.Namespace) -> int:
    import os

    from scripts.soak import _clean, _settled
    from tests.helpers.fixtures import AdminClients, provider_leases, provider_pods
    from tests.helpers.podwatch import PodRecorder

    sandbox_up()
    admin = AdminClients(os.environ["KUBECONFIG"])
    cleaned = _clean(admin, provider_pods, provider_leases)
    started, tally = time.time(), Tally()
    af = None
    try:  # Airflow's components run in sessions of their own: Ctrl-C does not reach them
        af = start_airflow(os.environ["KUBECONFIG"])
        with PodRecorder(admin, CLUSTERS, "app.kubernetes.io/managed-by=airflow-provider-skyshare",
                         resilient=True) as pods:
            outcomes = asyncio.run(drive(af, args, tally))
            leaked = _settled(admin, provider_pods)
    finally:
        stop_airflow(af)
    leases = provider_leases(admin)
    tally.tombstones = sum(map(len, provider_leases(admin, tombstones=True).values())) - sum(
        map(len, leases.values()))
    report = analyse(outcomes, pods, leaked, leases, tally, (time.time() - started) / 60,
                     started, cleaned)
    report["mode"] = "airflow"
    report.update(met(HOME))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak-airflow.json").write_text(json.dumps(report, indent=2, default=str))
    text = markdown(report)
    (RESULTS / "soak-airflow.md").write_text(text)
    print(text)
    print(f"(Airflow logs were in {HOME}; the report in {RESULTS.relative_to(ROOT)})")
    bad = [k for k in ("duplicates", "attempts_created_twice", "leaked_pods", "leaked_leases",
                       "lost_timelines", "apiservers_down_at_drain") if report[k]]
    return 1 if bad or not report["tasks_finished"] else 0
