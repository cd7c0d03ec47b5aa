"""The seed scenario and the team-queue example through a real scheduler and triggerer."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

import pytest

from airflow_provider_skyshare import fleetfile
from airflow_provider_skyshare.sandbox import connections
from scripts.browser import Browser, chart, check_png, dump_dom, parts
from scripts.scenario import run_scenario, run_team_queues

ROOT = Path(__file__).resolve().parents[2]
SHOTS = "SKYSHARE_UI_SHOTS"

pytestmark = pytest.mark.e2e


def placements(timeline):
    return [(a["cluster"], a["tier"], a["outcome"]) for a in timeline]


def skyshare(af, *args: str) -> str:
    """The `skyshare` CLI as a user runs it next to this Airflow."""
    out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "skyshare"), *args],
                         env=af.env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def lent(af) -> dict[str, dict[str, int]]:
    return {r["cluster"]: r["lent"]
            for r in json.loads(skyshare(af, "fleet", "--json"))["clusters"]}


def keep(shot: Path) -> None:
    """With SKYSHARE_UI_SHOTS set to a directory (docs/img), keep a copy of the screenshot
    there: how the docs' pictures are made, from this run (docs/operations.md)."""
    if os.environ.get(SHOTS):
        Path(os.environ[SHOTS]).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(os.environ[SHOTS]) / shot.name)


def check_ui(af, shots: Path) -> None:
    """The fleet page while bair lends its 2 T4 to rise, before abbeel takes them back.

    No token needed here: this Airflow runs with simple_auth_manager_all_admins, whose
    middleware signs every request in as admin, the plugin's routes included. The login itself
    is tested in test_ui_auth_airflow.py (and tests/unit/test_ui_auth.py)."""
    page = f"{af.url}/skyshare/?refresh=0"
    dom = dump_dom(page, shots, ("Skyshare fleet", "2 to rise", "no refresh"))
    assert "http-equiv" not in dom
    with urllib.request.urlopen(f"{af.url}/skyshare/", timeout=30) as resp:
        assert '<meta http-equiv="refresh" content="3">' in resp.read().decode()
    with Browser(shots, width=1100) as browser:
        fleet = browser.open(page)
        assert fleet.status == 200
        svg = chart(fleet.dom, "skyshare-fleet")
        bars = {c.get("data-cluster"): [(s.get("data-use"), s.get("data-gpus"))
                                        for s in parts(c, "segment")]
                for c in parts(svg, "cluster")}
        assert bars == {"rise": [("owner", "2")], "bair": [("lent", "2")]}, bars
        assert fleet.dom.index("skyshare-fleet") < fleet.dom.index("<table>")  # chart, table
        shot = browser.screenshot(shots / "fleet.png")
    check_png(shot, 1100, 300)
    keep(shot)
    api = af.get("/skyshare/api/fleet")
    assert {r["cluster"]: r["lent"] for r in api}["bair"] == {"rise": 2}


def trigger_logs(af, dag: str, run: str, task: str) -> str:
    """What the task's triggers wrote into its log (Airflow 3 routes them there)."""
    folder = af.home / "logs" / f"dag_id={dag}" / f"run_id={run}" / f"task_id={task}"
    return "\n".join(p.read_text(errors="replace") for p in folder.rglob("*.trigger.*.log"))


def check_timeline_page(af, run_id: str, shots: Path) -> None:
    """romil-train's timeline page: preempted on bair by abbeel, moved to rise, succeeded."""
    query = urlencode({"dag_id": "rise_user", "run_id": run_id, "task_id": "romil-train",
                       "refresh": 0})
    with Browser(shots, width=1100) as browser:
        page = browser.open(f"{af.url}/skyshare/timeline?{query}")
        assert page.status == 200 and "finished (XCom)" in page.dom
        svg = chart(page.dom, "skyshare-timeline")
        assert [g.get("data-cluster") for g in parts(svg, "lane")] == ["bair", "rise"]
        assert [(a.get("data-cluster"), a.get("data-outcome")) for a in parts(svg, "attempt")] \
            == [("bair", "Preempted"), ("rise", "Succeeded")]
        (mark,) = parts(svg, "preemption")
        assert mark.get("data-by") == "bair_user/abbeel", mark.attrib
        assert page.dom.index("skyshare-timeline") < page.dom.index("<table>")
        shot = browser.screenshot(shots / "timeline.png")
    check_png(shot, 1100, 300)
    keep(shot)


def connections_only(af) -> None:
    """The clusters are reached through Airflow connections and nothing else (issue 16): no
    kubeconfig on the Airflow side, a fleet of connection_ids, from the Variable."""
    env = af.env()
    assert not Path(env["KUBECONFIG"]).exists()
    fleet = fleetfile.parse_text(env["AIRFLOW_VAR_SKYSHARE_FLEET"], "variable")
    for c in fleet.clusters.values():
        assert c.connection_id and not c.context and c.access.connection_id, c
    assert set(fleet.clusters) == {"rise", "bair"}
    for path in env["AIRFLOW__SKYSHARE__FLEET_FILE"].split(","):  # the platform's other fleets
        assert "rise" not in fleetfile.load(path).clusters, path


def test_seed_scenario_through_real_airflow(airflow_server, admin_pods, no_leaks, tmp_path):
    connections_only(airflow_server)
    seen: dict[str, object] = {}

    def before_abbeel():
        # Visibility during the scenario: bair lends its 2 T4 to rise, abbeel would preempt.
        seen["lent"] = lent(airflow_server)
        seen["explain"] = json.loads(skyshare(airflow_server, "explain", "--gpus", "T4:2",
                                              "--org", "bair", "--user", "abbeel", "--json"))
        seen["explain_text"] = skyshare(airflow_server, "explain", "--gpus", "T4:2",
                                        "--org", "bair", "--user", "abbeel")
        check_ui(airflow_server, tmp_path)

    result = run_scenario(airflow_server, admin_pods, {"romil": "30s", "abbeel": "5s"},
                          before_abbeel=before_abbeel)
    assert result.states == {"romil": "success", "romil_placed": "success",
                             "romil-train": "success", "abbeel": "success"}
    assert placements(result.timelines["romil"]) == [("rise", "owner", "Succeeded")]
    assert placements(result.timelines["abbeel"]) == [("bair", "owner", "Succeeded")]
    train = result.timelines["romil-train"]
    assert placements(train) == [("bair", "borrower", "Preempted"), ("rise", "owner", "Succeeded")]
    assert train[0]["reason"] == "WorkloadEvictedDueToPreempted"
    # each org in its own namespace, with its own credential: rise's on bair too
    assert [a["namespace"] for a in train] == ["skyshare-rise", "skyshare-rise"]
    assert result.timelines["abbeel"][0]["namespace"] == "skyshare-bair"
    assert "abbeel" in train[0]["preempted_by"]
    assert sum(a["outcome"] == "Preempted" for a in train) == 1
    for task, timeline in result.timelines.items():  # one consistent clock per attempt
        for a in timeline:
            assert a["placed_at"] <= a["started_at"] <= a["ended_at"], (task, a)
    # the replacement was created right after the preemption was seen
    assert train[1]["placed_at"] - train[0]["ended_at"] < 5
    # what the CLI said before abbeel: bair lends 2 T4 to rise; abbeel would take them back
    assert seen["lent"]["bair"] == {"rise": 2}, seen["lent"]
    explain = seen["explain"]
    assert " on bair as owner " in explain["summary"], explain["summary"]
    assert any("romil-train" in v["task"] for v in explain["preempts"]), explain["preempts"]
    assert "romil-train" in seen["explain_text"]
    # per org and cluster, the tier it may use, and that the cluster enforces it
    assert {(r["cluster"], r["tier"], r["credential"]) for r in explain["tiers"]} == {
        ("bair", "owner", "skyshare_bair_bair"), ("rise", "borrower", "skyshare_bair_rise")}
    assert all(r["enforced"] for r in explain["tiers"])
    # and after: nothing lent
    assert lent(airflow_server) == {"rise": {}, "bair": {}}
    timeline = skyshare(airflow_server, "timeline", "rise_user", result.runs["rise_user"],
                        "romil-train")
    assert "Preempted" in timeline and "Succeeded" in timeline
    # live logs: each attempt's container log in the task's log, marked with where it ran
    # (the sandbox's clusters serve one container log file each, via KWOK)
    logs = trigger_logs(airflow_server, "rise_user", result.runs["rise_user"], "romil-train")
    assert "[attempt 1 on bair] " in logs and "[attempt 2 on rise] " in logs, logs[-3000:]
    check_timeline_page(airflow_server, result.runs["rise_user"], tmp_path)
    print(f"scenario wall time {result.wall_seconds:.1f}s; abbeel submitted -> romil-train "
          f"running again {result.recovery_seconds:.1f}s")
    print(result.table())


def add_connections(af, env: dict[str, str]) -> None:
    """Connections of a cluster started after Airflow, stored through the REST API (the
    metastore: another of Airflow's secrets backends)."""
    for name, value in env.items():
        conn = json.loads(value)
        body = {"connection_id": name.removeprefix("AIRFLOW_CONN_").lower(),
                "conn_type": conn["conn_type"], "extra": json.dumps(conn["extra"])}
        try:
            af.call("POST", "/api/v2/connections", body)
        except urllib.error.HTTPError as exc:
            assert exc.code == 409, exc.read()  # a rerun in the same Airflow: there already


def test_team_queues_through_real_airflow(sandbox, airflow_server, admin_pods, no_leaks):
    teams = ROOT / "tests" / "e2e" / "fleets" / "fleet-teams.yaml"
    sandbox.ensure_cluster("campus", gpus=4, fleet=str(teams))
    add_connections(airflow_server, connections.build([str(teams)]))
    result = run_team_queues(airflow_server, admin_pods)
    assert result.states == {"team-b-experiment": "success", "team-a-production": "success"}
    assert placements(result.timelines["team-a-production"]) == [("campus", "owner", "Succeeded")]
    assert placements(result.timelines["team-b-experiment"]) == [
        ("campus", "borrower", "Preempted"), ("campus", "borrower", "Succeeded")]


def test_seed_scenario_followed_in_worker_slots(airflow_server, admin_pods, no_leaks):
    """deferrable=False: every job is followed, and moved, by the worker that placed it."""
    af = airflow_server
    result = run_scenario(af, admin_pods, {"romil": "20s", "abbeel": "5s"},
                          dags=("rise_user_sync", "bair_user_sync"))
    assert set(result.states.values()) == {"success"}, result.states
    assert placements(result.timelines["romil-train"]) == [
        ("bair", "borrower", "Preempted"), ("rise", "owner", "Succeeded")]
    assert placements(result.timelines["abbeel"]) == [("bair", "owner", "Succeeded")]
    triggers = [p for dag in ("rise_user_sync", "bair_user_sync")
                for p in (af.home / "logs" / f"dag_id={dag}").rglob("*.trigger.*.log")]
    assert triggers == []  # no triggerer took part


def test_a_gang_example_dag_through_real_airflow(sandbox, airflow_server, no_leaks):
    """dags/rise/rise_gang.py: a 2-node job on den (rise's, two nodes) succeeds, and the
    timeline (the CLI's, from Airflow's XCom once the pods are gone) shows both members."""
    from scripts.scenario import wait_for

    gangs = ROOT / "tests" / "e2e" / "fleets" / "fleet-gangs.yaml"
    for name in ("den", "lab"):
        sandbox.ensure_cluster(name, nodes=2, gpus=2, fleet=str(gangs))
    af = airflow_server
    add_connections(af, connections.build([str(gangs)]))
    run = af.trigger("rise_gang", {"duration": "5s"})
    wait_for(lambda: af.run_state("rise_gang", run) in ("success", "failed"), 300,
             "rise_gang finished")
    assert af.run_state("rise_gang", run) == "success"
    timeline = af.xcom("rise_gang", run, "romil-ddp")
    assert [(a["cluster"], a["tier"], a["outcome"], len(a["members"])) for a in timeline] == [
        ("den", "owner", "Succeeded", 2)], timeline
    leader = timeline[0]["pod"]
    assert timeline[0]["members"] == [leader, f"{leader}-r1"]
    shown = skyshare(af, "timeline", "rise_gang", run, "romil-ddp")
    assert f"2 pods: {leader}, {leader}-r1" in shown, shown
