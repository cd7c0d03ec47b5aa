"""The UI plugin behind Airflow's auth manager: a real SimpleAuthManager, real JWTs, a real
(SQLite) metadata database; only the data sources (XCom, pods, probes) are stubbed.

Per-DAG denial: SimpleAuthManager's roles give every Viewer read access to every DAG, so
the one way it denies a DAG to a Viewer is multi-team mode, where a DAG belongs to the team
of its bundle and a user of another team is refused. That is also how the orgs map onto
Airflow here (docs/security.md), so the test runs multi-team: rise's viewer may read
rise's DAGs, bair's viewer may not. A user with no role stands for "authenticated, no
permission" (the fleet's 403).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from airflow_provider_skyshare import capacity, metadb, taskpods
from airflow_provider_skyshare.plugins import ui
from airflow_provider_skyshare.snapshot import Snapshot
from airflow_provider_skyshare.timeline import Timeline

ROOT = Path(__file__).resolve().parents[2]
USERS = "admin:admin,rise_viewer:viewer:rise,bair_viewer:viewer:bair,nobody:"
ATTEMPT = {"number": 1, "cluster": "rise", "tier": "owner", "pod": "p-1", "namespace": "skyshare-rise",
           "placed_at": 1.0, "started_at": 2.0, "ended_at": 3.0, "outcome": "Succeeded"}
RISE_RUN = {"dag_id": "rise_dag", "run_id": "r1", "task_id": "train"}
BAIR_RUN = {"dag_id": "bair_dag", "run_id": "r1", "task_id": "train"}
SECRET = "unit-test-secret-" + "x" * 48  # 64+ bytes, as PyJWT recommends for HS512
PAGES = ["/", "/api/fleet", "/timeline", "/api/timeline"]


def _seed_teams() -> None:
    """Teams rise and bair, each owning a bundle with one DAG."""
    from airflow.models.dag import DagModel
    from airflow.models.dagbundle import DagBundleModel
    from airflow.models.team import Team
    from airflow.utils.session import create_session

    with create_session() as session:
        for org in ("rise", "bair"):
            team = Team(name=org)
            bundle = DagBundleModel(name=f"{org}-bundle")
            bundle.teams.append(team)
            session.add_all([team, bundle])
            session.flush()
            session.add(DagModel(dag_id=f"{org}_dag", bundle_name=bundle.name,
                                 fileloc=f"/dags/{org}/{org}_dag.py"))


@pytest.fixture(scope="module")
def airflow_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Airflow configured as an API server would be: SimpleAuthManager (not all-admins),
    multi-team, its own SQLite database; everything restored afterwards."""
    from airflow import settings
    from airflow.api_fastapi import app as api_app
    from airflow.utils import db

    home = tmp_path_factory.mktemp("airflow-home")
    env = {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__AUTH_MANAGER":
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": USERS,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__CORE__MULTI_TEAM": "True",
        "AIRFLOW__API_AUTH__JWT_SECRET": SECRET,
        "AIRFLOW__SKYSHARE__FLEET_FILE": str(ROOT / "dags" / "fleet.yaml"),
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        settings.configure_vars()
        settings.reconfigure_orm()
        try:
            db.initdb()
            _seed_teams()
            api_app.purge_cached_app()
            yield api_app.init_auth_manager()
        finally:
            api_app.purge_cached_app()
            settings.dispose_orm(do_log=False)
    settings.configure_vars()  # back to the default database, for whatever runs next
    settings.configure_orm()


@pytest.fixture
def client(airflow_auth: Any, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    async def probe(fleet: Any, **_: Any) -> Snapshot:
        return Snapshot()

    async def live_timeline(*_: Any, **__: Any) -> Timeline:
        return Timeline()

    monkeypatch.setattr(capacity, "probe", probe)
    monkeypatch.setattr(taskpods, "live_timeline", live_timeline)
    monkeypatch.setattr(metadb, "stored_timeline", lambda *a, **k: [ATTEMPT])
    return TestClient(ui.app)


def token(am: Any, name: str) -> str:
    """A JWT for a configured user, minted by the auth manager as its login route does."""
    user = next(u for u in am.get_users() if u.username == name)
    return am.generate_jwt(user)


def get(client: TestClient, page: str, query: dict[str, str] | None = None, *,
        bearer: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    params = {"refresh": "0"} if query is None else query
    return client.get(page, params=params, headers=headers)


def query_for(page: str) -> dict[str, str] | None:
    return RISE_RUN if "timeline" in page else None


@pytest.mark.parametrize("page", PAGES)
def test_no_token_is_401_on_every_route(client: TestClient, page: str) -> None:
    resp = get(client, page, query_for(page))
    assert resp.status_code == 401, resp.text


@pytest.mark.parametrize("page", PAGES)
def test_a_forged_token_is_refused(client: TestClient, page: str) -> None:
    resp = get(client, page, query_for(page), bearer="not.a.jwt")
    assert resp.status_code in (401, 403), resp.text  # Airflow: 403 "Invalid JWT token"


@pytest.mark.parametrize("page", ["/timeline", "/api/timeline"])
def test_another_teams_dag_is_403_and_nothing_is_read(client: TestClient, airflow_auth: Any,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      page: str) -> None:
    read: list[tuple[Any, ...]] = []
    monkeypatch.setattr(metadb, "stored_timeline", lambda *a, **k: read.append(a) or [ATTEMPT])
    resp = get(client, page, RISE_RUN, bearer=token(airflow_auth, "bair_viewer"))
    assert resp.status_code == 403, resp.text
    assert read == []


@pytest.mark.parametrize("page", ["/timeline", "/api/timeline"])
def test_no_role_is_403_on_a_timeline(client: TestClient, airflow_auth: Any, page: str) -> None:
    resp = get(client, page, RISE_RUN, bearer=token(airflow_auth, "nobody"))
    assert resp.status_code == 403, resp.text


def test_own_teams_dag_renders_the_timeline(client: TestClient, airflow_auth: Any) -> None:
    """Each team's viewer reads its own DAG: the 403 above is the team, not the role."""
    bair = get(client, "/api/timeline", BAIR_RUN, bearer=token(airflow_auth, "bair_viewer"))
    assert bair.status_code == 200, bair.text
    rise = token(airflow_auth, "rise_viewer")
    page = get(client, "/timeline", RISE_RUN, bearer=rise)
    assert page.status_code == 200, page.text
    assert "Timeline of rise_dag / train / r1" in page.text and "finished (XCom)" in page.text
    # the chart, then the table; a finished timeline does not reload
    assert page.text.index('<svg xmlns="http://www.w3.org/2000/svg" class="skyshare-timeline"') \
        < page.text.index("<table>")
    assert 'data-outcome="Succeeded"' in page.text and "http-equiv" not in page.text
    api = get(client, "/api/timeline", RISE_RUN, bearer=rise)
    assert api.status_code == 200
    assert api.json()["attempts"][0]["pod"] == "p-1"


def test_a_live_timeline_reloads_until_told_not_to(client: TestClient, airflow_auth: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Not in XCom yet: read from the pods, drawn to now, and the page reloads."""
    running = Timeline.from_list([{**ATTEMPT, "ended_at": None, "outcome": ""}])

    async def live_timeline(*_: Any, **__: Any) -> Timeline:
        return running

    monkeypatch.setattr(metadb, "stored_timeline", lambda *a, **k: [])
    monkeypatch.setattr(taskpods, "live_timeline", live_timeline)
    rise = token(airflow_auth, "rise_viewer")
    page = get(client, "/timeline", RISE_RUN, bearer=rise)
    assert page.status_code == 200, page.text
    assert 'data-outcome="Running"' in page.text
    assert '<meta http-equiv="refresh" content="3">' in page.text
    still = get(client, "/timeline", {**RISE_RUN, "refresh": "0"}, bearer=rise)
    assert "http-equiv" not in still.text and 'data-outcome="Running"' in still.text


def test_the_uis_cookie_is_enough(client: TestClient, airflow_auth: Any) -> None:
    """What a browser sends after logging in to the Airflow UI: the `_token` cookie."""
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN

    client.cookies.set(COOKIE_NAME_JWT_TOKEN, token(airflow_auth, "rise_viewer"))
    assert get(client, "/timeline", RISE_RUN).status_code == 200
    assert get(client, "/api/timeline", BAIR_RUN).status_code == 403
    assert get(client, "/").status_code == 200


def test_admin_reads_every_teams_dag(client: TestClient, airflow_auth: Any) -> None:
    admin = token(airflow_auth, "admin")
    for run in (RISE_RUN, BAIR_RUN):
        assert get(client, "/api/timeline", run, bearer=admin).status_code == 200


@pytest.mark.parametrize("user", ["rise_viewer", "bair_viewer", "admin"])
def test_fleet_for_any_viewer(client: TestClient, airflow_auth: Any, user: str) -> None:
    bearer = token(airflow_auth, user)
    page = get(client, "/", bearer=bearer)
    assert page.status_code == 200 and "Skyshare fleet" in page.text and "no refresh" in page.text
    assert page.text.index('class="skyshare-fleet"') < page.text.index("<table>")
    api = get(client, "/api/fleet", {}, bearer=bearer)
    assert api.status_code == 200 and {r["cluster"] for r in api.json()} >= {"rise", "bair"}


@pytest.mark.parametrize("page", ["/", "/api/fleet"])
def test_fleet_refused_without_a_role(client: TestClient, airflow_auth: Any, page: str) -> None:
    resp = get(client, page, {}, bearer=token(airflow_auth, "nobody"))
    assert resp.status_code == 403, resp.text


def test_an_expired_token_is_401(client: TestClient, airflow_auth: Any) -> None:
    user = next(u for u in airflow_auth.get_users() if u.username == "rise_viewer")
    expired = airflow_auth.generate_jwt(user, expiration_time_in_seconds=-3600)
    assert get(client, "/", bearer=expired).status_code == 401


REAL_APP = """
import json, os, sys
from airflow import settings
settings.configure_vars(); settings.reconfigure_orm()
from airflow.utils import db
db.initdb()
from airflow_provider_skyshare import capacity
from airflow_provider_skyshare.snapshot import Snapshot
async def probe(fleet, **_): return Snapshot()
capacity.probe = probe
from airflow.api_fastapi.app import create_app, purge_cached_app
from fastapi.testclient import TestClient
seen = {}
for all_admins in ("False", "True"):
    os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] = all_admins
    purge_cached_app()
    client = TestClient(create_app("core"))
    seen[all_admins] = [client.get(p).status_code for p in ("/skyshare/?refresh=0", "/skyshare/api/fleet")]
print(json.dumps(seen))
"""


def test_airflows_own_app_mounts_it_behind_the_login(tmp_path: Path) -> None:
    """Airflow's API server app (create_app, the plugin from its entry point), in a process of
    its own: 401 without a login; with `simple_auth_manager_all_admins` (the e2e and demo
    Airflow) its middleware signs every request in as admin, the plugin's routes included,
    so pages fetched without a token (tests/e2e/test_scenario_airflow.py) still render.
    """

    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}  # only these:
    env.update({"AIRFLOW_HOME": str(tmp_path),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path}/airflow.db",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(tmp_path / "passwords.json"),
                "AIRFLOW__API_AUTH__JWT_SECRET": SECRET, "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__SKYSHARE__FLEET_FILE": str(ROOT / "dags" / "fleet.yaml")})
    out = subprocess.run([sys.executable, "-c", REAL_APP], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"False": [401, 401], "True": [200, 200]}


def test_the_plugin_loads_without_airflows_security_module() -> None:
    """Workers import the plugin (macros); the auth dependencies are imported per request."""

    code = ("import sys, airflow_provider_skyshare.plugins.ui; "
            "sys.exit('airflow.api_fastapi.core_api.security' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=60).returncode == 0

