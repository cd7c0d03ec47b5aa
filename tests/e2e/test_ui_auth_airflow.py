"""The UI plugin behind Airflow's login, over HTTP and in headless Chromium, on a real API
server (issue 16).

The e2e Airflow runs with `simple_auth_manager_all_admins` (a local demo: Airflow's
middleware signs every request in as an admin, the plugin's routes included), so it cannot
show a refusal. This test starts a second API server on the same home and database with
logins on: SimpleAuthManager users, one Viewer per team (multi-team: rise's and bair's
bundles are Airflow teams). Stopped when the module ends.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlencode

import pytest

from scripts.browser import Browser, check_png
from scripts.scenario import wait_for
from scripts.services import free_port

pytestmark = pytest.mark.e2e

USERS = "rise_viewer:viewer:rise,bair_viewer:viewer:bair"
TIMELINE = "/skyshare/timeline?" + urlencode(
    {"dag_id": "rise_user", "run_id": "no-such-run", "task_id": "romil", "map_index": -1})


@dataclass
class LoginApi:
    url: str
    passwords: dict[str, str]

    def status(self, path: str, *, token: str | None = None, cookie: str | None = None) -> int:
        """The HTTP status of GET path, with a bearer token or the UI's `_token` cookie."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if cookie:
            headers["Cookie"] = f"_token={cookie}"
        req = urllib.request.Request(self.url + path, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                resp.read()
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    def body(self, path: str, token: str) -> str:
        req = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.read().decode()

    def login(self, user: str) -> str:
        """A JWT as any API client gets one: POST /auth/token with the user's password."""
        data = json.dumps({"username": user, "password": self.passwords[user]}).encode()
        req = urllib.request.Request(f"{self.url}/auth/token", data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())["access_token"]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="module")
def login_api(airflow_server) -> Iterator[LoginApi]:
    af = airflow_server
    port = free_port(avoid=af.port)
    passwords = af.home / "ui-auth-passwords.json"
    env = {**af.env(), "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": USERS,
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
           "AIRFLOW__API__PORT": str(port), "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
           "AIRFLOW__API__WORKERS": "1"}
    log = open(af.home / "api-server-logins.log", "ab")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen([sys.executable, "-m", "airflow", "api-server", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, cwd=af.home)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is not None or _healthy(url), 180,
                 f"the API server with logins on {url}", interval=0.5)
        assert proc.poll() is None, f"api-server exited; see {af.home / 'api-server-logins.log'}"
        wait_for(lambda: af.dag_ready("rise_user"), 120, "DAG rise_user parsed")
        yield LoginApi(url, json.loads(passwords.read_text()))
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.mark.parametrize("path", ["/skyshare/?refresh=0", "/skyshare/api/fleet", TIMELINE,
                                  TIMELINE.replace("/timeline", "/api/timeline")])
def test_no_login_is_401(login_api, path):
    assert login_api.status(path) == 401


def test_a_viewer_sees_the_fleet_with_a_token_or_the_uis_cookie(login_api):
    token = login_api.login("rise_viewer")
    assert login_api.status("/skyshare/api/fleet", token=token) == 200
    assert "Skyshare fleet" in login_api.body("/skyshare/?refresh=0", token)
    assert login_api.status("/skyshare/?refresh=0", cookie=token) == 200


def test_a_timeline_only_for_the_dags_team(login_api):
    """rise_user is in rise's bundle, so team rise's: bair's viewer is refused."""
    assert login_api.status(TIMELINE, token=login_api.login("bair_viewer")) == 403
    rise = login_api.login("rise_viewer")
    assert login_api.status(TIMELINE, token=rise) == 200
    assert "Timeline of rise_user / romil / no-such-run" in login_api.body(TIMELINE, rise)


def test_in_a_browser_the_login_decides_what_each_page_shows(login_api, tmp_path):
    """Headless Chromium as a person uses it: not logged in, Airflow answers the plugin's pages
    401 (its JSON error, no redirect to the login page); logged in as the login page does it
    (the `_token` cookie), bair's viewer is refused rise's timeline (403) but sees the fleet,
    and rise's viewer sees the timeline."""
    fleet = f"{login_api.url}/skyshare/?refresh=0"
    timeline = f"{login_api.url}{TIMELINE}&refresh=0"
    with Browser(tmp_path, width=1100) as browser:
        for page in (fleet, timeline):
            anonymous = browser.open(page)
            assert (anonymous.status, anonymous.url) == (401, page)
            assert "Not authenticated" in anonymous.dom and "<svg" not in anonymous.dom
        assert browser.login("bair_viewer", login_api.passwords["bair_viewer"]) == 201
        refused = browser.open(timeline)
        assert refused.status == 403 and "Timeline of" not in refused.dom, refused.dom[:500]
        assert browser.open(fleet).status == 200
        assert browser.login("rise_viewer", login_api.passwords["rise_viewer"]) == 201
        shown = browser.open(timeline)
        assert shown.status == 200, shown.dom[:500]
        assert "Timeline of rise_user / romil / no-such-run" in shown.dom
        seen = browser.open(fleet)
        assert seen.status == 200 and 'class="skyshare-fleet"' in seen.dom
        shot = browser.screenshot(tmp_path / "fleet-as-rise-viewer.png")
    check_png(shot, 1100, 200)
