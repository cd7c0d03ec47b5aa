"""The romil/abbeel scenario through a real Airflow (scheduler + triggerer + API server).

Used by the main job (scripts/demo.py) and by the e2e tests: start or reuse an Airflow with
the example DAGs in one of two shapes (``airflow standalone`` on SQLite, or the production
shape of scripts/production.py: PostgreSQL, Redis, Celery, two of each component), trigger
runs through the REST API in the seed's order, wait on the APIs (never on a clock), and
collect every task's timeline.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

from airflow_provider_skyshare.sandbox.connections import for_team_process
from scripts.services import free_port

ROOT = Path(__file__).resolve().parent.parent
TERMINAL_RUN = {"success", "failed"}


class ScenarioError(RuntimeError):
    pass


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (urllib.error.URLError, ConnectionError, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise ScenarioError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


class Shape(str, Enum):
    STANDALONE = "standalone"  # airflow standalone: SQLite, LocalExecutor, one of each
    PRODUCTION = "production"  # PostgreSQL, Redis, Celery; two schedulers, workers, triggerers


@dataclass
class Airflow:
    """An Airflow of one shape in its own home; reused when already running there."""

    home: Path
    port: int = 8080
    shape: Shape = Shape.STANDALONE
    dags_folder: Path = ROOT / "dags"  # its fleet files; each sub-folder is a DAG bundle
    kubeconfig: str = ""
    bundles: dict[str, Path] | None = None  # bundle name -> folder (default: the sub-folders)
    # Bundles that are Airflow teams (multi-team mode: the org is the team); the others map
    # to orgs through the fleet's orgs[].bundles. Each team gets its own triggerer.
    teams: tuple[str, ...] = ("rise", "bair")
    extra_env: dict[str, str] = field(default_factory=dict)
    # AIRFLOW_CONN_* -> connection JSON (`skyshare-sandbox connections`). Given, the clusters
    # are reached through these only: no kubeconfig file on the Airflow side (env_for).
    connections: dict[str, str] = field(default_factory=dict)
    _ready: set[str] = field(default_factory=set, repr=False)
    extra_pids: list[int] = field(default_factory=list, repr=False)  # stopped with standalone

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = os.environ.copy()
        # standalone starts its components as `airflow ...`: this interpreter's bin first.
        env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
        if self.shape is Shape.PRODUCTION:
            from scripts import production
            from scripts.services import Services

            env.update(production.env(self, Services.load_or_new(self.home)))
        env.update({
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            # Airflow's switch for every deferrable operator (its default is False): long
            # waits free the worker slot. The operator follows it (docs/operator.md).
            "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE": "True",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            # A local demo: everyone is admin, no login needed.
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
            "KUBECONFIG": self.kubeconfig or env.get("KUBECONFIG", ""),
        })
        if self.connections:  # connections only: a kubeconfig read anywhere fails loudly
            env["KUBECONFIG"] = str(self.home / "no-kubeconfig")
            env.update(for_team_process(self.connections, None))  # every team's: the clusters' own
        env["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"] = json.dumps([
            {"name": name, "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
             "kwargs": {"path": str(path), "refresh_interval": 5},
             **({"team_name": name} if name in self.active_teams() else {})}
            for name, path in self.dag_bundles().items()])
        if self.active_teams():
            env["AIRFLOW__CORE__MULTI_TEAM"] = "True"
        fleets = [str(p) for p in sorted(self.dags_folder.glob("fleet*.yaml"))]
        if fleets:  # the platform's fleets: fleet.yaml first (the default)
            fleets.sort(key=lambda p: not p.endswith("/fleet.yaml"))
            env.setdefault("AIRFLOW__SKYSHARE__FLEET_FILE", ",".join(fleets))
        env.update(self.extra_env)
        return env

    def env_for(self, component: str, team: str | None = None) -> dict[str, str]:
        """One component's environment: the API server holds every team's connections (it
        answers a task's look-up with the task's team); a team's triggerer holds its team's
        under their plain names (Airflow 3.3's triggerer looks up without the team); the
        workers, schedulers and DAG processor hold no team's, so no DAG can read another
        team's token from its environment."""
        env = self.env()
        if component == "api-server" or self.shape is Shape.STANDALONE:
            return {**env, **self.connections}
        if component == "triggerer":
            return {**env, **for_team_process(self.connections, team)}
        return env

    def active_teams(self) -> list[str]:
        return [t for t in self.teams if t in self.dag_bundles()]

    def dag_bundles(self) -> dict[str, Path]:
        """Each org's DAGs are a bundle of their own: the org of a task is its bundle's."""
        if self.bundles is not None:
            return self.bundles
        return {d.name: d for d in sorted(self.dags_folder.iterdir())
                if d.is_dir() and any(d.glob("*.py"))}

    def healthy(self) -> bool:
        try:
            health = self.get("/api/v2/monitor/health")
        except (urllib.error.URLError, OSError, ValueError):
            return False
        parts = ("metadatabase", "scheduler", "triggerer")
        return all((health.get(p) or {}).get("status") == "healthy" for p in parts)

    def start(self, timeout: float = 180) -> None:
        if self.shape is Shape.PRODUCTION:
            from scripts import production

            return production.start(self, timeout)
        if self.healthy():  # reused: its teams' triggerers may have died with an earlier run
            for team in self.active_teams():
                if not self.triggerer_pids(team):
                    self.start_triggerer(team)
            return
        self.home.mkdir(parents=True, exist_ok=True)
        if self.active_teams():
            self.prepare_db()
        log = open(self.home / "standalone.log", "ab")  # noqa: SIM115 - the child keeps it
        proc = subprocess.Popen(
            [sys.executable, "-m", "airflow", "standalone"], env=self.env_for("standalone"),
            stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            cwd=self.home,
        )
        (self.home / "standalone.pid").write_text(str(proc.pid))
        wait_for(lambda: (proc.poll() is None and self.healthy()) or proc.poll() is not None,
                 timeout, f"airflow standalone healthy on {self.url}", interval=0.5)
        if proc.poll() is not None:
            raise ScenarioError(f"airflow standalone exited; see {self.home / 'standalone.log'}")
        for team in self.active_teams():
            self.start_triggerer(team)

    def _airflow(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "airflow", *args], env=self.env(),
                              capture_output=True, text=True, timeout=300, cwd=self.home)

    def prepare_db(self) -> None:
        """Migrate; in multi-team mode the teams exist before the bundles that name them are
        read."""
        done = self._airflow("db", "migrate")
        if done.returncode != 0:
            raise ScenarioError(f"airflow db migrate failed: {done.stderr[-2000:]}")
        for team in self.active_teams():
            made = self._airflow("teams", "create", team)
            if made.returncode != 0 and "already exists" not in made.stdout + made.stderr:
                raise ScenarioError(f"airflow teams create {team} failed: {made.stderr[-2000:]}")

    def start_triggerer(self, team: str | None = None) -> int:
        """A triggerer of its own for a team (standalone runs the global one only): a team's
        triggers run nowhere else. Stopped with Airflow."""
        if self.shape is Shape.PRODUCTION:
            from scripts import production

            return production.launch(self, production.next_triggerer(self, team))
        name = f"triggerer-{team or 'global'}"
        env = {**self.env_for("triggerer", team),
               "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port())}
        log = open(self.home / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        proc = subprocess.Popen(
            [sys.executable, "-m", "airflow", "triggerer", *(["--team-name", team] if team else [])],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=self.home)
        self.extra_pids.append(proc.pid)
        return proc.pid

    def triggerer_pids(self, team: str | None = None) -> list[int]:
        """This Airflow's triggerers (of `team`, or the global one): never another's."""
        found = []
        for entry in Path("/proc").iterdir():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
                environ = (entry / "environ").read_bytes().split(b"\0")
            except (OSError, ValueError):
                continue
            if b"triggerer" not in cmd or f"AIRFLOW_HOME={self.home}".encode() not in environ:
                continue
            named = b"--team-name" in cmd and cmd[cmd.index(b"--team-name") + 1].decode()
            if (named or None) == team:
                found.append(int(entry.name))
        return found

    def stop(self, purge: bool = False) -> None:
        """Stop every process of this Airflow; purge: also drop its database server's data
        (a throwaway home)."""
        if self.shape is Shape.PRODUCTION:
            from scripts import production

            return production.stop(self, purge)
        teams = [pid for t in self.active_teams() for pid in self.triggerer_pids(t)]
        for pid in {*self.extra_pids, *teams}:  # also those an earlier process started
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
        self.extra_pids.clear()
        pid_file = self.home / "standalone.pid"
        if not pid_file.exists():
            return
        pid = int(pid_file.read_text())
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pid_file.unlink(missing_ok=True)
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            os.killpg(pid, signal.SIGKILL)
        pid_file.unlink(missing_ok=True)

    # -- REST API ----------------------------------------------------------------------
    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read()
        return json.loads(text) if text else None

    def get(self, path: str) -> Any:
        return self.call("GET", path)

    def dag_ready(self, dag_id: str) -> bool:
        try:
            self.get(f"/api/v2/dags/{dag_id}")
            return True
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return False
            raise

    def import_errors(self) -> list[dict[str, Any]]:
        return self.get("/api/v2/importErrors")["import_errors"]

    def unpause(self, dag_id: str) -> None:
        self.call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def ensure_ready(self, dag_id: str, timeout: float = 120) -> None:
        """Wait until the DAG processor has parsed the DAG, then unpause it (once)."""
        if dag_id in self._ready:
            return
        wait_for(lambda: self.dag_ready(dag_id), timeout, f"DAG {dag_id} parsed")
        self.unpause(dag_id)
        self._ready.add(dag_id)

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        self.ensure_ready(dag_id)
        run = self.call("POST", f"/api/v2/dags/{dag_id}/dagRuns",
                        {"logical_date": None, "conf": conf or {}})
        return run["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns/{_q(run_id)}")["state"]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        items = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{_q(run_id)}/taskInstances")
        return {t["task_id"]: t["state"] for t in items["task_instances"]}

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        try:
            entry = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{_q(run_id)}/taskInstances/"
                             f"{_q(task_id)}/xcomEntries/{key}?deserialize=true")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise
        value = entry.get("value")
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                import ast

                return ast.literal_eval(value)
        return value

    def db(self, sql: str, *params: Any) -> list[tuple]:
        """Read this Airflow's metadata DB (for what the REST API does not show); ``?``
        marks a parameter in either shape."""
        import sqlite3

        if self.shape is Shape.PRODUCTION:
            import psycopg2

            from scripts.services import Services

            dsn = Services.load_or_new(self.home).sql_alchemy_conn.replace("+psycopg2", "")
            with contextlib.closing(psycopg2.connect(dsn)) as con, con.cursor() as cur:
                cur.execute(sql.replace("?", "%s"), params)
                return cur.fetchall()
        with contextlib.closing(sqlite3.connect(self.home / "airflow.db", timeout=30)) as con:
            return con.execute(sql, params).fetchall()

    def following(self, dag_id: str, run_id: str, task_id: str) -> bool:
        """Something follows the task's running pod: its trigger (or, deferrable=False, its
        worker) logged it running. Before that nothing watches the pod, and a preemption in
        that gap is seen later as a lost pod (docs/operations.md)."""
        folder = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        return any(" running on " in log.read_text(errors="replace")
                   for log in folder.glob("*.log*"))

    def patch_task(self, dag_id: str, run_id: str, task_id: str, state: str) -> None:
        self.call("PATCH", f"/api/v2/dags/{dag_id}/dagRuns/{_q(run_id)}/taskInstances/"
                           f"{_q(task_id)}", {"new_state": state})


def _q(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


# -- the scenario ----------------------------------------------------------------------
@dataclass
class Result:
    runs: dict[str, str]  # dag_id -> run_id
    states: dict[str, str]  # task -> state
    timelines: dict[str, list[dict[str, Any]]]
    abbeel_submitted: float
    train_running_again: float | None
    wall_seconds: float

    @property
    def recovery_seconds(self) -> float | None:
        if self.train_running_again is None:
            return None
        return self.train_running_again - self.abbeel_submitted

    def table(self) -> str:
        from airflow_provider_skyshare.timeline import format_table

        def ts(value: float | None) -> str:
            if value is None:
                return "-"
            return datetime.fromtimestamp(value, tz=timezone.utc).strftime("%H:%M:%S.%f")[:-4]

        rows = []
        for task, attempts in self.timelines.items():
            for a in attempts:
                rows.append([task, str(a["number"]), a["cluster"], a["tier"], ts(a["placed_at"]),
                             ts(a["started_at"]), ts(a["ended_at"]), a["outcome"] or "running",
                             a["preempted_by"] or "-"])
        return format_table(rows, ["task", "attempt", "cluster", "tier", "queued", "start",
                                   "end", "outcome", "preempted by"])


def placement(af: Airflow, dag_id: str, run_id: str, task_id: str) -> dict[str, Any] | None:
    return af.xcom(dag_id, run_id, task_id, "skyshare_placement")


def run_scenario(af: Airflow, admin_pods, durations: dict[str, str] | None = None,
                 timeout: float = 240, say=print, before_abbeel=None,
                 dags: tuple[str, str] = ("rise_user", "bair_user")) -> Result:
    """admin_pods(cluster, task_id) -> list of (pod name, phase) as cluster admin.

    before_abbeel(): called while romil-train runs on its first cluster, before abbeel is
    triggered (the e2e test looks at the fleet from the CLI and the UI there).
    dags: rise's and bair's DAG (the e2e tests also run deferrable=False twins).
    """
    rise, bair = dags
    durations = {"romil": "30s", "abbeel": "10s", **(durations or {})}
    for dag_id in dags:
        wait_for(lambda d=dag_id: af.dag_ready(d), 120, f"DAG {dag_id} parsed")
        af.unpause(dag_id)
    ours = {f"{d}.py" for d in dags}  # other bundles' errors are not the scenario's
    errors = [e for e in af.import_errors() if Path(e.get("filename", "")).name in ours]
    if errors:
        raise ScenarioError(f"DAG import errors: {errors}")
    start = time.time()
    rise_run = af.trigger(rise, {"duration": durations["romil"]})
    say(f"triggered {rise} ({rise_run}): romil, then romil-train")
    where = wait_for(lambda: placement(af, rise, rise_run, "romil-train"), timeout,
                     "romil-train placed")
    say(f"romil-train placed on {where['cluster']} as {where['tier']} ({where['why']})")
    wait_for(lambda: any(phase == "Running" for _, phase in admin_pods(where["cluster"],
                                                                        "romil-train")),
             timeout, "romil-train running")
    wait_for(lambda: af.following(rise, rise_run, "romil-train"), timeout,
             "romil-train followed (by its trigger, or its worker with deferrable=False)")
    if before_abbeel:
        before_abbeel()
    abbeel_submitted = time.time()
    bair_run = af.trigger(bair, {"duration": durations["abbeel"]})
    say(f"triggered {bair} ({bair_run}): abbeel")

    def done() -> bool:
        return (af.run_state(rise, rise_run) in TERMINAL_RUN
                and af.run_state(bair, bair_run) in TERMINAL_RUN)

    wait_for(done, timeout, "both DAG runs finished", interval=0.5)
    runs = {rise: rise_run, bair: bair_run}
    states = {**af.task_states(rise, rise_run), **af.task_states(bair, bair_run)}
    timelines: dict[str, list[dict[str, Any]]] = {}
    for dag_id, task in ((rise, "romil"), (rise, "romil-train"),
                         (bair, "abbeel")):
        timelines[task] = (af.xcom(dag_id, runs[dag_id], task)
                           or af.xcom(dag_id, runs[dag_id], task, "skyshare_timeline") or [])
    train = timelines.get("romil-train") or []
    again = train[1]["started_at"] if len(train) > 1 else None
    return Result(runs, states, timelines, abbeel_submitted, again, time.time() - start)


def run_team_queues(af: Airflow, admin_pods, timeout: float = 240, say=print) -> Result:
    """team-b borrows campus; team-a's production job reclaims it; team-b runs again."""
    for dag_id in ("team_b_dev", "team_a_prod"):
        wait_for(lambda d=dag_id: af.dag_ready(d), 120, f"DAG {dag_id} parsed")
        af.unpause(dag_id)
    start = time.time()
    b_run = af.trigger("team_b_dev")
    say(f"triggered team_b_dev ({b_run})")
    wait_for(lambda: any(ph == "Running" for _, ph in admin_pods("campus", "team-b-experiment")),
             timeout, "team-b experiment running on campus")
    wait_for(lambda: af.following("team_b_dev", b_run, "team-b-experiment"), timeout,
             "a triggerer following the team-b experiment")
    a_submitted = time.time()
    a_run = af.trigger("team_a_prod")
    say(f"triggered team_a_prod ({a_run})")
    wait_for(lambda: af.run_state("team_b_dev", b_run) in TERMINAL_RUN
             and af.run_state("team_a_prod", a_run) in TERMINAL_RUN,
             timeout, "both team runs finished", interval=0.5)
    runs = {"team_b_dev": b_run, "team_a_prod": a_run}
    states = {**af.task_states("team_b_dev", b_run), **af.task_states("team_a_prod", a_run)}
    timelines = {
        "team-b-experiment": af.xcom("team_b_dev", b_run, "team-b-experiment") or [],
        "team-a-production": af.xcom("team_a_prod", a_run, "team-a-production") or [],
    }
    b = timelines["team-b-experiment"]
    again = b[1]["started_at"] if len(b) > 1 else None
    return Result(runs, states, timelines, a_submitted, again, time.time() - start)
