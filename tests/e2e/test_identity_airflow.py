"""The org of a task is its DAG bundle's, whatever the DAG says (issue 12), through Airflow.

bair's bundle holds DAGs that claim rise's identity (tests/e2e/bundles/bair): each is
refused with an error that names the org Airflow derived, and no pod ever exists for them
on any cluster: the apiservers' events name every pod there was.
"""

from __future__ import annotations

import pytest

from scripts.scenario import wait_for

pytestmark = pytest.mark.e2e


def task_log(af, dag_id: str, run_id: str) -> str:
    logs = [p for p in (af.home / "logs").rglob("*.log")
            if f"dag_id={dag_id}" in str(p) and run_id in str(p)]
    return "\n".join(p.read_text(errors="replace") for p in logs)


def pods_ever(admin, dag_id: str) -> set[str]:
    """Every pod of this DAG any cluster ever had: live ones, and any an event names."""
    seen = set()
    for _, api in admin.items():
        seen |= {p.metadata.name for p in api.list_pod_for_all_namespaces(
            label_selector=f"skyshare.dev/dag-id={dag_id}").items}
        seen |= {e.involved_object.name for e in api.list_event_for_all_namespaces().items
                 if e.involved_object.kind == "Pod"
                 and e.involved_object.name.startswith("claim-")}
    return seen


@pytest.mark.parametrize(("dag_id", "words"), [
    # multi-team: bair's bundle belongs to Airflow team bair, and the team is the org
    ("spoof_org", ["org='rise' is not the org of this DAG, 'bair' (from the Airflow team "
                   "'bair' of DAG bundle 'bair')"]),
    ("spoof_owner", ["owner 'romil' is a member of rise, not of 'bair'"]),
])
def test_a_dag_claiming_another_org_is_refused_and_no_pod_exists(airflow_server, admin, dag_id,
                                                                 words, no_leaks):
    af = airflow_server
    af.ensure_ready(dag_id)
    run = af.trigger(dag_id)
    wait_for(lambda: af.run_state(dag_id, run) in ("success", "failed"), 120, f"{dag_id} ended")
    assert af.task_states(dag_id, run) == {"claim": "failed"}
    text = task_log(af, dag_id, run)
    for w in words:
        assert w in text, text[-3000:]
    assert not pods_ever(admin, dag_id)


def test_a_dag_with_a_fleet_file_of_its_own_does_not_load(airflow_server):
    af = airflow_server
    errors = wait_for(lambda: [e for e in af.import_errors()
                               if "bair_spoof_fleet.py" in e.get("filename", "")], 120,
                      "the import error of bair_spoof_fleet.py")
    text = errors[0]["stack_trace"]
    assert "is not a fleet file this Airflow is configured with" in text
    assert "drop fleet_file=" in text


def test_the_seed_dags_run_as_their_bundles_orgs(airflow_server):
    """The example DAGs say no org at all: rise_user is rise's, bair_user is bair's."""
    af = airflow_server
    bundles = {d["dag_id"]: d.get("bundle_name") for d in af.get("/api/v2/dags?limit=100")["dags"]}
    assert bundles["rise_user"] == "rise" and bundles["bair_user"] == "bair"
    assert bundles["spoof_org"] == "bair"


def test_a_teams_connections_are_its_own(airflow_server):
    """Issue 16: bair's task resolves bair's connection (through the API server, which knows
    the task's team) and not rise's, by its name or with rise's team spelled into it; its
    worker's environment holds only the clusters' own (read-only) connections."""
    af, dag_id = airflow_server, "bair_reads_connections"
    run = af.trigger(dag_id)
    wait_for(lambda: af.run_state(dag_id, run) in ("success", "failed"), 120, f"{dag_id} ended")
    assert af.task_states(dag_id, run) == {"own": "success", "rises": "failed",
                                           "rises_spelled": "failed",
                                           "connections_in_environment": "success"}
    assert af.xcom(dag_id, run, "own") == ["skyshare-bair"]
    assert af.xcom(dag_id, run, "connections_in_environment") == [
        "AIRFLOW_CONN_SKYSHARE_BAIR", "AIRFLOW_CONN_SKYSHARE_RISE"]
    text = task_log(af, dag_id, run)
    assert "The conn_id `skyshare_rise_bair` isn't defined" in text, text[-3000:]
    assert "The conn_id `_rise___skyshare_rise_bair` isn't defined" in text, text[-3000:]


# What a triggerer does when its trigger asks for a connection: it asks Airflow's in-process
# execution API, with no task and so no team (Airflow 3.3.2, triggerer_job_runner.py).
TRIGGERER_LOOKUP = """
import os
import sys
from airflow.jobs.triggerer_job_runner import TriggerRunnerSupervisor
from airflow.sdk.execution_time.comms import GetConnection
from airflow.sdk.execution_time.request_handlers import handle_get_connection

client = TriggerRunnerSupervisor.make_client(None)  # uses no state of the supervisor
for conn_id in sys.argv[1:]:
    found, _ = handle_get_connection(client, GetConnection(conn_id=conn_id))
    print(conn_id, type(found).__name__, flush=True)
os._exit(0)  # the in-process API's threads would keep the process alive
"""


def test_a_triggerer_does_not_see_team_scoped_connections(airflow_server):
    """Why each team's triggerer is given its team's connections under their plain names
    (scripts/scenario.py env_for, docs/operations.md): even where rise's team-scoped
    connection is set, a triggerer's look-up does not find it; the global one it does. When
    this fails, Airflow scopes a triggerer's look-ups to its team and that can go."""
    import subprocess
    import sys

    af = airflow_server
    env = {**af.env_for("api-server"), "_AIRFLOW_PROCESS_CONTEXT": "server"}
    assert "AIRFLOW_CONN__RISE___SKYSHARE_RISE_BAIR" in env
    out = subprocess.run([sys.executable, "-c", TRIGGERER_LOOKUP, "skyshare_rise_bair",
                          "skyshare_rise"], env=env, capture_output=True, text=True, timeout=120,
                         cwd=af.home)
    assert out.returncode == 0, out.stderr[-3000:]
    found = dict(line.split()[:2] for line in out.stdout.splitlines()
                 if line.startswith("skyshare_"))
    assert found == {"skyshare_rise_bair": "ErrorResponse",
                     "skyshare_rise": "ConnectionResult"}, out.stdout[-3000:]
