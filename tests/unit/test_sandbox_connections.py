"""The sandbox's clusters as Airflow connections (sandbox/connections.py): which connections a
fleet names, under which environment names, and that Airflow's own environment backend and
cncf-kubernetes' hook read them as meant (no cluster is contacted)."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
from pathlib import Path

import pytest
import yaml
from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook
from airflow.secrets.environment_variables import EnvironmentVariablesBackend

from airflow_provider_skyshare import fleetfile
from airflow_provider_skyshare.fleet import parse
from airflow_provider_skyshare.sandbox import certs, cli
from airflow_provider_skyshare.sandbox.cli import render
from airflow_provider_skyshare.sandbox.connections import (
    Endpoint,
    Grant,
    environment,
    for_team_process,
    grants,
)

ROOT = Path(__file__).resolve().parents[2]
E2E_FLEET = ROOT / "tests" / "e2e" / "fleets" / "fleet.yaml"
ENDPOINTS = {"rise": Endpoint("https://127.0.0.1:1", "Q0E="),
             "bair": Endpoint("https://127.0.0.1:2", "Q0E=")}


def tokens_for(found: list[Grant]) -> dict[tuple[str, str, str], str]:
    return {g.account: f"token-of-{g.cluster}-{g.namespace}" for g in found}


def test_the_seed_fleet_names_each_clusters_own_and_each_orgs_connection():
    found = {g.conn_id: g for g in grants([fleetfile.load(E2E_FLEET)], multi_team=True)}
    assert set(found) == {"skyshare_rise", "skyshare_bair", "skyshare_rise_rise",
                          "skyshare_rise_bair", "skyshare_bair_rise", "skyshare_bair_bair"}
    own = found["skyshare_bair"]
    assert (own.cluster, own.namespace, own.service_account, own.team) == (
        "bair", "skyshare-system", "skyshare-operator", None)  # every team's: reads capacity
    rise_on_bair = found["skyshare_rise_bair"]
    assert (rise_on_bair.cluster, rise_on_bair.namespace, rise_on_bair.service_account,
            rise_on_bair.team) == ("bair", "skyshare-rise", "skyshare", "rise")


def test_without_multi_team_every_connection_is_global():
    assert {g.team for g in grants([fleetfile.load(E2E_FLEET)])} == {None}


def test_an_org_gets_no_connection_where_it_may_not_run_and_contexts_name_none():
    fleet = parse({
        "defaults": {"gpu_products": {"T4": "Tesla-T4"},
                     "access": {"connection_id": "c_{org}_{cluster}"}},
        "orgs": [{"name": "a"}, {"name": "b"}],
        "clusters": [{"name": "x", "owner": "a", "connection_id": "own_x", "lend": False},
                     {"name": "y", "owner": "b", "context": "y-operator",
                      "access": {"context": "{org}@{cluster}"}}]})
    assert [g.conn_id for g in grants([fleet])] == ["own_x", "c_a_x"]  # b may not use x


def test_names_are_airflows_and_only_the_team_reads_its_own(monkeypatch):
    found = grants([fleetfile.load(E2E_FLEET)], multi_team=True)
    env = environment(found, ENDPOINTS, tokens_for(found))
    assert "AIRFLOW_CONN__RISE___SKYSHARE_RISE_BAIR" in env
    assert "AIRFLOW_CONN_SKYSHARE_BAIR" in env
    monkeypatch.setenv("AIRFLOW__CORE__MULTI_TEAM", "True")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    backend = EnvironmentVariablesBackend()  # Airflow's own look-up, as its API server does it
    assert backend.get_connection("skyshare_rise_bair", team_name="rise") is not None
    assert backend.get_connection("skyshare_rise_bair", team_name="bair") is None
    assert backend.get_connection("skyshare_rise_bair") is None  # no team: not a global one
    assert backend.get_connection("skyshare_bair", team_name="bair") is not None
    # spelling the team's prefix into the id does not reach it either
    assert backend.get_connection("_rise___skyshare_rise_bair", team_name="bair") is None


def test_the_connection_holds_one_context_with_the_orgs_token_and_namespace(monkeypatch,
                                                                           tmp_path):
    certs.ensure_ca(tmp_path)  # a real CA: the hook loads it into an SSL context
    ca = base64.b64encode((tmp_path / "ca.crt").read_bytes()).decode()
    found = grants([fleetfile.load(E2E_FLEET)])
    env = environment(found, {n: Endpoint(e.server, ca) for n, e in ENDPOINTS.items()},
                      tokens_for(found))
    value = json.loads(env["AIRFLOW_CONN_SKYSHARE_RISE_BAIR"])
    assert value["conn_type"] == "kubernetes"
    assert value["extra"]["namespace"] == "skyshare-rise"
    config = yaml.safe_load(value["extra"]["kube_config"])
    assert [c["cluster"]["server"] for c in config["clusters"]] == ["https://127.0.0.1:2"]
    assert [u["user"]["token"] for u in config["users"]] == ["token-of-bair-skyshare-rise"]
    monkeypatch.setenv("AIRFLOW_CONN_SKYSHARE_RISE_BAIR", env["AIRFLOW_CONN_SKYSHARE_RISE_BAIR"])

    async def through_the_hook():  # as clients._new_async reads it
        async with AsyncKubernetesHook(conn_id="skyshare_rise_bair").get_conn() as api:
            return api.configuration.host, str(api.configuration.api_key)

    host, key = asyncio.run(through_the_hook())
    assert host == "https://127.0.0.1:2" and "token-of-bair-skyshare-rise" in key


def test_one_token_per_service_account_and_cluster():
    found = grants([fleetfile.load(E2E_FLEET)])
    assert len({g.account for g in found}) == len(found)  # here each connection its own
    twice = [Grant("a", "rise", "ns", "sa"), Grant("b", "rise", "ns", "sa")]
    env = environment(twice, ENDPOINTS, {("rise", "ns", "sa"): "t"})
    assert set(env) == {"AIRFLOW_CONN_A", "AIRFLOW_CONN_B"}


@pytest.mark.parametrize(("team", "want"), [
    ("rise", {"AIRFLOW_CONN_SKYSHARE_RISE_BAIR", "AIRFLOW_CONN_SKYSHARE_BAIR", "OTHER"}),
    ("bair", {"AIRFLOW_CONN_SKYSHARE_BAIR_BAIR", "AIRFLOW_CONN_SKYSHARE_BAIR", "OTHER"}),
    (None, {"AIRFLOW_CONN_SKYSHARE_BAIR", "OTHER"}),
])
def test_a_teams_process_holds_its_teams_connections_and_no_other(team, want):
    env = {"AIRFLOW_CONN__RISE___SKYSHARE_RISE_BAIR": "r",
           "AIRFLOW_CONN__BAIR___SKYSHARE_BAIR_BAIR": "b",
           "AIRFLOW_CONN_SKYSHARE_BAIR": "own", "OTHER": "x"}
    assert set(for_team_process(env, team)) == want


def test_the_printed_lines_give_a_shell_the_same_values(tmp_path):
    found = grants([fleetfile.load(E2E_FLEET)])
    env = environment(found, ENDPOINTS, tokens_for(found))
    (tmp_path / "conns.env").write_text(render(env) + "\n")
    out = subprocess.run(["bash", "-c", "set -a; . ./conns.env; env -0"], cwd=tmp_path,
                         capture_output=True, text=True, check=True, env={})
    seen = dict(item.split("=", 1) for item in out.stdout.split("\0") if "=" in item)
    assert {k: seen[k] for k in env} == env
    assert json.loads(render(env, as_json=True)) == env


def test_without_a_sandbox_the_command_says_so(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SKYSHARE_SANDBOX_HOME", str(tmp_path))
    assert cli.main(["connections", "--fleet", str(E2E_FLEET)]) == 1
    assert "the sandbox is not up" in capsys.readouterr().err
