"""``[skyshare] fleet_variable``: the fleet from an Airflow Variable (and so from the secrets
backend), with the fleet file's validation messages, wherever the fleet is read."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from airflow_provider_skyshare import cli, fleetconf, fleetfile
from airflow_provider_skyshare.fleet import FleetError
from airflow_provider_skyshare.operators import MultiClusterGpuOperator
from airflow_provider_skyshare.operators.gpu import platform_fleet

ROOT = Path(__file__).resolve().parents[2]
SEED = (ROOT / "dags" / "fleet.yaml").read_text()
GOOD = {"task_id": "t", "image": "busybox", "gpus": "T4:2", "owner": "romil"}


def fetch_from(values: dict[str, object]):
    return lambda name: values.get(name)


def test_yaml_and_json_give_the_fleet_of_the_file():
    by_yaml = fleetfile.from_variable("v_yaml", fetch_from({"v_yaml": SEED}))
    as_json = json.dumps(yaml.safe_load(SEED))
    by_json = fleetfile.from_variable("v_json", fetch_from({"v_json": as_json}))
    from_file = fleetfile.load(ROOT / "dags" / "fleet.yaml")
    assert by_yaml.to_dict() == by_json.to_dict() == from_file.to_dict()
    assert by_yaml.source == "Airflow Variable 'v_yaml'"


def test_a_missing_variable_says_how_to_set_it():
    with pytest.raises(FleetError) as info:
        fleetfile.from_variable("skyshare_fleet", fetch_from({}))
    assert (info.value.source, info.value.key, info.value.problem) == (
        "Airflow Variable 'skyshare_fleet'", "(variable)", "not found")
    assert "AIRFLOW_VAR_SKYSHARE_FLEET" in info.value.fix
    assert "fleet_variable" in info.value.fix


@pytest.mark.parametrize(("text", "key", "problem"), [
    ("orgs: [\n  - name: rise\n clusters: x", "line 2, column 3", "YAML syntax error"),
    ("", "(file)", "the fleet is empty"),
    (SEED.replace("owner: bair", "owner: bear"), "clusters[1].owner", "unknown org 'bear'"),
    (SEED.replace("clusters:", "clusterz:"), "clusterz", "unknown key"),
])
def test_an_invalid_variable_gets_the_fleet_files_messages(text, key, problem):
    with pytest.raises(FleetError) as info:
        fleetfile.from_variable("bad", fetch_from({"bad": text}))
    assert info.value.source == "Airflow Variable 'bad'"
    assert info.value.key == key
    assert info.value.problem.startswith(problem)


def test_a_variable_that_is_not_text_is_refused():
    with pytest.raises(FleetError, match="expected text, got dict"):
        fleetfile.from_variable("d", fetch_from({"d": {"orgs": []}}))


def test_parsed_again_only_when_the_text_changes():
    values = {"v": SEED}
    first = fleetfile.from_variable("v", fetch_from(values))
    assert fleetfile.from_variable("v", fetch_from(values)) is first
    values["v"] = SEED.replace("probe_timeout_seconds: 3", "probe_timeout_seconds: 4")
    assert fleetfile.from_variable("v", fetch_from(values)).policy.probe_timeout_seconds == 4


@pytest.fixture
def platform(monkeypatch):
    """Airflow configured as a platform team would: the fleet in AIRFLOW_VAR_SKYSHARE_FLEET
    (Airflow's environment secrets backend), named by [skyshare] fleet_variable."""
    monkeypatch.delenv("AIRFLOW__SKYSHARE__FLEET_FILE", raising=False)
    monkeypatch.setenv("AIRFLOW__SKYSHARE__FLEET_VARIABLE", "skyshare_fleet")
    monkeypatch.setenv("AIRFLOW_VAR_SKYSHARE_FLEET", SEED)
    monkeypatch.setattr(fleetconf, "VARIABLE_TTL_SECONDS", 0.0)  # these tests edit it
    return monkeypatch


def test_the_variable_is_fetched_once_per_ttl_not_once_per_task(platform):
    """A triggerer restarted with thousands of deferred tasks reads each one's fleet."""
    fetched = []
    real = fleetfile.from_variable
    platform.setattr(fleetfile, "from_variable", lambda name: fetched.append(name) or real(name))
    platform.setattr(fleetconf, "VARIABLE_TTL_SECONDS", 30.0)
    fleetconf._recent.clear()
    clock = [1000.0]
    platform.setattr(fleetconf, "_clock", lambda: clock[0])
    source = "Airflow Variable 'skyshare_fleet'"
    for _ in range(100):
        assert set(fleetconf.fleet_at(source).clusters) == {"rise", "bair"}
    platform_fleet(None)
    assert fetched == ["skyshare_fleet"]
    clock[0] += 30.0
    fleetconf.fleet_at(source)
    assert fetched == ["skyshare_fleet"] * 2


def test_airflow_reads_the_variable_through_its_secrets_backend(platform):
    fleet = platform_fleet(None)  # through airflow's Variable, not a fake
    assert fleet.source == "Airflow Variable 'skyshare_fleet'"
    assert set(fleet.clusters) == {"rise", "bair"}


def test_the_operator_checks_the_variables_fleet_when_the_dag_is_parsed(platform):
    MultiClusterGpuOperator(**GOOD)
    platform.setenv("AIRFLOW_VAR_SKYSHARE_FLEET", SEED.replace("T4: Tesla-T4", "A100: X"))
    with pytest.raises(ValueError, match="offered by no cluster"):
        MultiClusterGpuOperator(**{**GOOD, "task_id": "t2"})
    platform.delenv("AIRFLOW_VAR_SKYSHARE_FLEET")
    with pytest.raises(ValueError, match=re.escape(
            "Airflow Variable 'skyshare_fleet': (variable): not found")):
        MultiClusterGpuOperator(**{**GOOD, "task_id": "t3"})


def test_with_a_variable_a_dag_cannot_bring_a_fleet_file_of_its_own(platform):
    with pytest.raises(ValueError, match="is not a fleet this Airflow is configured with"):
        MultiClusterGpuOperator(**{**GOOD, "fleet_file": str(ROOT / "dags" / "fleet.yaml")})


def test_a_configured_fleet_file_may_still_be_picked(platform):
    teams = str(ROOT / "dags" / "fleet-teams.yaml")
    platform.setenv("AIRFLOW__SKYSHARE__FLEET_FILE", teams)
    assert set(platform_fleet(teams).clusters) == {"campus"}
    assert set(platform_fleet(None).clusters) == {"rise", "bair"}  # the default: the Variable


def test_the_cli_reads_the_variable(platform, capsys):
    assert cli.main(["manifests", "--cluster", "bair", "-o", "json"]) == 0
    kinds = {o["kind"] for o in json.loads(capsys.readouterr().out)["items"]}
    assert {"Namespace", "LocalQueue"} <= kinds


def test_the_cli_says_when_the_variable_is_missing(platform, capsys):
    platform.delenv("AIRFLOW_VAR_SKYSHARE_FLEET")
    assert cli.main(["manifests", "--cluster", "bair"]) == 2
    assert "Airflow Variable 'skyshare_fleet': (variable): not found" in capsys.readouterr().err


def test_the_ui_reads_the_variable(platform):
    from airflow_provider_skyshare.plugins.ui import _fleet

    assert _fleet().source == "Airflow Variable 'skyshare_fleet'"
