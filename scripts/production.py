"""The production shape of the test bed's Airflow: what a real deployment runs.

PostgreSQL as the metadata DB, Redis as the Celery broker (scripts/services.py), and every
Airflow component as a process of its own with its own log under the Airflow home: the API
server, the DAG processor, two schedulers, two Celery workers and two triggerers per trigger
queue (each team's, and the global one). All on 127.0.0.1. The standalone shape
(``airflow standalone``, SQLite) stays the one ``./dev demo`` uses by default.

Failure detection is tightened so that the HA tests wait seconds, not Airflow's minutes
(documented in docs/operations.md with the production values).
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from scripts.services import Services, free_port, write_private

if TYPE_CHECKING:
    from scripts.scenario import Airflow

SCHEDULERS = 2
WORKERS = 2
TRIGGERERS_PER_QUEUE = 2
WORKER_CONCURRENCY = 16

# Seconds. Airflow's defaults (30, 300, 300) are for machines that pause under load; a test
# bed on loopback can tell a dead component from a slow one much sooner.
FAST_FAILOVER = {
    "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "20",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "10",
    "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "10",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
}


@dataclass(frozen=True)
class Component:
    """One Airflow process: its name is its log's and pid file's."""

    name: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()


def env(af: Airflow, services: Services) -> dict[str, str]:
    """What every component shares: the DB, the broker, and the secrets that let a token
    signed by one process be checked by another."""
    keys = _secrets(af.home)
    return {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": services.sql_alchemy_conn,
        "AIRFLOW__CELERY__BROKER_URL": services.broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": services.result_backend,
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(WORKER_CONCURRENCY),
        "AIRFLOW__CORE__FERNET_KEY": keys["fernet"],
        "AIRFLOW__API_AUTH__JWT_SECRET": keys["jwt"],
        "AIRFLOW__API__SECRET_KEY": keys["api"],
        "AIRFLOW__API__WORKERS": "2",
        **FAST_FAILOVER,
    }


def components(af: Airflow) -> list[Component]:
    found = [Component("api-server", ("api-server", "--port", str(af.port))),
             Component("dag-processor", ("dag-processor",))]
    found += [Component(f"scheduler-{i}", ("scheduler",)) for i in range(1, SCHEDULERS + 1)]
    found += [Component(f"worker-{i}", ("celery", "worker", "--celery-hostname",
                                        f"worker-{i}@%h"),
                        (("AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT", str(free_port())),))
              for i in range(1, WORKERS + 1)]
    for team in [None, *af.active_teams()]:
        found += [triggerer(team, i) for i in range(1, TRIGGERERS_PER_QUEUE + 1)]
    return found


def by_name(af: Airflow, name: str) -> Component:
    """The component of that name (to start it again), including triggerers added later."""
    for component in components(af):
        if component.name == name:
            return component
    team, _, index = name.removeprefix("triggerer-").rpartition("-")
    if name.startswith("triggerer-") and index.isdigit():
        return triggerer(None if team == "global" else team, int(index))
    raise KeyError(f"no Airflow component named {name!r}")


def next_triggerer(af: Airflow, team: str | None) -> Component:
    """One more triggerer for the team's queue (as an operator replaces a lost one)."""
    taken = {p.stem for p in (af.home / "pids").glob("triggerer-*.pid")}
    index = next(i for i in range(1, 100) if triggerer(team, i).name not in taken)
    return triggerer(team, index)


def triggerer(team: str | None, index: int) -> Component:
    return Component(f"triggerer-{team or 'global'}-{index}",
                     ("triggerer", *(["--team-name", team] if team else [])),
                     (("AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT", str(free_port())),))


def start(af: Airflow, timeout: float) -> None:
    """Start the servers and every component not running yet (never a second copy of one),
    including those a test or a crash killed, then wait until Airflow says it is healthy."""
    from scripts.scenario import ScenarioError, wait_for

    Services.load_or_new(af.home).start()
    running = pids(af)
    if not running:
        af.prepare_db()  # migrate and create the teams before any component reads them
    planned = components(af)
    # the plan, and what was started later (another triggerer) and has died since
    for component in [*planned, *(by_name(af, n) for n in dead(af)
                                  if n not in {c.name for c in planned})]:
        if component.name not in running:
            launch(af, component)
    wait_for(lambda: af.healthy() or dead(af), timeout,
             f"production-shaped Airflow healthy on {af.url}", interval=0.5)
    exited = dead(af)
    if exited:
        raise ScenarioError(f"Airflow component(s) exited: {', '.join(exited)}; see "
                            f"{', '.join(str(af.home / f'{n}.log') for n in exited)}")


def launch(af: Airflow, component: Component) -> int:
    log = open(af.home / f"{component.name}.log", "ab")  # noqa: SIM115 - the child keeps it
    args = component.args
    team = args[args.index("--team-name") + 1] if "--team-name" in args else None
    proc = subprocess.Popen(
        [sys.executable, "-m", "airflow", *args],
        env={**af.env_for(args[0], team), **dict(component.env)}, stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True, cwd=af.home)
    pid_dir = af.home / "pids"
    pid_dir.mkdir(exist_ok=True)
    # with its start time: a pid file outlives its process, and after a reboot the number
    # may be another's (setproctitle rewrites a component's cmdline and environ)
    record = f"{proc.pid} {_started(proc.pid)}"
    (pid_dir / f"{component.name}.pid").write_text(record)
    with open(pid_dir / "groups", "a") as groups:  # every group ever started, for stop()
        groups.write(record + "\n")
    return proc.pid


def pids(af: Airflow) -> dict[str, int]:
    """Component name -> pid (process group leader), for those still alive."""
    found = {}
    for pid_file in sorted((af.home / "pids").glob("*.pid")):
        pid, started = pid_file.read_text().split()
        if _running(int(pid), started):
            found[pid_file.stem] = int(pid)
    return found


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (field 3 on), [] when there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _started(pid: int) -> str:
    fields = _stat(pid)
    return fields[19] if fields else "?"  # field 22: start time, in clock ticks after boot


def _running(pid: int, started: str) -> bool:
    """Alive, not a zombie, and the process the pid file was written for. A component killed
    by a test stays a zombie until its parent (the one that launched it) reaps it, so it is
    reaped here when it is ours."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    fields = _stat(pid)
    return bool(fields) and fields[0] != "Z" and fields[19] == started


def kill(af: Airflow, name: str) -> None:
    """kill -9 a component and every process it started, as when its machine is lost (a
    worker's task processes die with it)."""
    signal_all(af, name, signal.SIGKILL)


def component_of(af: Airflow, pid: int) -> str | None:
    """The component that started this process (a task's: its Celery worker)."""
    for name, leader in pids(af).items():
        if pid == leader or pid in _descendants(leader):
            return name
    return None


def triggerers_running(af: Airflow, dag_id: str, task_id: str) -> list[str]:
    """The triggerers that run this task's trigger now: those holding its trigger log open
    (Airflow names no process in the trigger's row). Two, for a moment, in a hand-over."""
    marks = (f"/dag_id={dag_id}/", f"/task_id={task_id}/", ".log.trigger.")
    found = []
    for name, leader in pids(af).items():
        if name.startswith("triggerer-") and any(
                all(m in target for m in marks)
                for pid in (leader, *_descendants(leader)) for target in _open_files(pid)):
            found.append(name)
    return found


def signal_all(af: Airflow, name: str, sig: signal.Signals) -> None:
    """Signal a component and every process it started (SIGSTOP: a machine that froze)."""
    leader = pids(af).get(name)
    if leader is None:
        raise LookupError(f"Airflow component {name} is not running")
    for pid in (leader, *_descendants(leader)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _open_files(pid: int) -> list[str]:
    targets = []
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                targets.append(os.readlink(fd))
    return targets


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop(af: Airflow, purge: bool) -> None:
    """SIGTERM every component, SIGKILL what is left after 30 s, including processes that
    left its process group (Airflow's supervisor starts task and trigger runners in their own)."""
    running = pids(af)
    victims = {pid for leader in running.values() for pid in (leader, *_descendants(leader))}
    for pid in running.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and pids(af):  # (reaps our own zombies)
        time.sleep(0.2)
    for pid in victims | _stragglers(af.home / "pids" / "groups"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid_file in (af.home / "pids").glob("*"):
        pid_file.unlink()
    if (af.home / "services.json").exists():
        Services.load_or_new(af.home).stop(purge=purge)


def _stragglers(groups: Path) -> set[int]:
    """Processes left in the group of a component that died earlier (a Celery worker's log
    server outlives a killed worker): same group, started after its leader."""
    if not groups.exists():
        return set()
    leaders = dict(line.split() for line in groups.read_text().split("\n") if line)
    found = set()
    for entry in Path("/proc").iterdir():
        fields = _stat(int(entry.name)) if entry.name.isdigit() else []
        # fields[2]: the process group; fields[19]: the start time (clock ticks after boot)
        started = leaders.get(fields[2], "") if fields else ""
        if started.isdigit() and int(fields[19]) >= int(started):
            found.add(int(entry.name))
    return found


def dead(af: Airflow) -> list[str]:
    names = {p.stem for p in (af.home / "pids").glob("*.pid")}
    return sorted(names - set(pids(af)))


def _secrets(home: Path) -> dict[str, str]:
    """Generated once per home and shared by every component (as a deployment's secret
    store would): a JWT signed by the scheduler must verify in the API server."""
    path = home / "secrets.env"
    if not path.exists():
        values = {"fernet": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
                  "jwt": secrets.token_urlsafe(32), "api": secrets.token_urlsafe(32)}
        write_private(path, "".join(f"{k}={v}\n" for k, v in values.items()))
    return dict(line.split("=", 1) for line in path.read_text().split())


