"""`airflow skyshare ...` and its short form `skyshare`: one command table, Airflow's output
conventions, and answers a script can parse even when no cluster answers."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from airflow_provider_skyshare import cli, get_provider_info

ROOT = Path(__file__).resolve().parents[2]
NAMES = {"fleet", "explain", "timeline", "orphans", "manifests"}


@pytest.fixture
def fleet_file(tmp_path: Path) -> str:
    """Two clusters whose kubeconfig does not exist: unreachable at once, no network."""
    missing = str(tmp_path / "no-kubeconfig")
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump({
        "version": 1, "defaults": {"gpu_products": {"T4": "Tesla-T4"}},
        "policy": {"probe_timeout_seconds": 1},
        "orgs": [{"name": "rise", "members": ["romil"]}, {"name": "bair", "members": ["abbeel"]}],
        "clusters": [{"name": n, "owner": n, "context": f"{n}-ctx", "kubeconfig": missing}
                     for n in ("rise", "bair")],
    }))
    return str(path)


def airflow(*argv: str, home: Path) -> subprocess.CompletedProcess:
    """The real `airflow` CLI, from this tree (cwd first on sys.path), in a throwaway home."""
    env = {**os.environ, "AIRFLOW_HOME": str(home), "PYTHONPATH": str(ROOT)}
    env.pop("AIRFLOW__SKYSHARE__FLEET_FILE", None)
    return subprocess.run([sys.executable, "-m", "airflow", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_provider_info_names_the_cli_group() -> None:
    assert get_provider_info()["cli"] == [
        "airflow_provider_skyshare.cli_definition.get_skyshare_cli_commands"]


def test_the_airflow_group_has_the_scripts_commands_and_options() -> None:
    from airflow_provider_skyshare.cli_definition import get_skyshare_cli_commands

    (group,) = get_skyshare_cli_commands()
    assert group.name == "skyshare"
    assert {c.name for c in group.subcommands} == NAMES
    script = parser_commands(cli.parser())
    for command in group.subcommands:
        assert {a.flags for a in command.args} == {
            tuple(a.option_strings) or (a.dest,) for a in script[command.name]._actions
            if a.dest != "help"}


def parser_commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_airflow_skyshare_help_lists_the_subcommands(tmp_path: Path) -> None:
    proc = airflow("skyshare", "--help", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    listed = {line.split()[0] for line in proc.stdout.splitlines() if line.startswith("    ")}
    assert listed >= NAMES, proc.stdout


def test_airflow_skyshare_manifests_json_is_one_kubectl_list(tmp_path: Path, fleet_file: str) -> None:
    proc = airflow("skyshare", "manifests", "--fleet", fleet_file, "--cluster", "rise", "-o", "json",
                   home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    assert document["kind"] == "List"
    assert {"Namespace", "LocalQueue"} <= {o["kind"] for o in document["items"]}


def test_airflow_skyshare_exits_2_on_a_fixable_error(tmp_path: Path, fleet_file: str) -> None:
    proc = airflow("skyshare", "manifests", "--fleet", fleet_file, "--cluster", "nope", home=tmp_path)
    assert proc.returncode == 2
    assert "unknown cluster 'nope'" in proc.stderr


@pytest.mark.parametrize("argv", [["--fleet", "{f}", "fleet", "-o", "json"],
                                  ["fleet", "--fleet", "{f}", "--output", "json"],
                                  ["fleet", "--fleet", "{f}", "--json"]])
def test_fleet_json_with_unreachable_clusters_is_one_document(
        argv: list[str], fleet_file: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([a.format(f=fleet_file) for a in argv]) == 0
    document = json.loads(capsys.readouterr().out)
    assert [(r["cluster"], r["reachable"]) for r in document["clusters"]] == [
        ("rise", False), ("bair", False)]
    assert document["clusters"][0]["total"] == 0  # numbers stay numbers
    assert "kubeconfig" in document["clusters"][0]["error"]
    assert {(r["org"], r["cluster"]) for r in document["tiers"]} == {
        (o, c) for o in ("rise", "bair") for c in ("rise", "bair")}


@pytest.mark.parametrize("output", ["table", "plain"])
def test_fleet_tables_say_why_a_cluster_is_missing(
        output: str, fleet_file: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--fleet", fleet_file, "fleet", "-o", output]) == 0
    out = capsys.readouterr().out
    assert "GPUs per cluster" in out and "What each org may use where" in out
    assert out.count("unreachable: cluster") == 2


def test_fleet_yaml(fleet_file: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--fleet", fleet_file, "fleet", "-o", "yaml"]) == 0
    assert len(yaml.safe_load(capsys.readouterr().out)["clusters"]) == 2


def test_manifests_default_is_yaml_for_kubectl(fleet_file: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--fleet", fleet_file, "manifests", "--cluster", "bair"]) == 0
    objects = [o for o in yaml.safe_load_all(capsys.readouterr().out) if o]
    assert {"Namespace", "LocalQueue"} <= {o["kind"] for o in objects}


def test_no_fleet_file_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    for var in ("AIRFLOW__SKYSHARE__FLEET_FILE", "SKYSHARE_FLEET_FILE"):
        monkeypatch.delenv(var, raising=False)
    assert cli.main(["fleet"]) == 2
    assert "no fleet file given" in capsys.readouterr().err


def test_fleet_nodes_json_names_each_unreachable_cluster(fleet_file: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["fleet", "--fleet", fleet_file, "--nodes", "-o", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["nodes"]
    assert [(r["cluster"], r["node"]) for r in rows] == [("rise", None), ("bair", None)]
    assert all("kubeconfig" in r["error"] for r in rows)


def test_fleet_nodes_table(fleet_file: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["fleet", "--fleet", fleet_file, "--nodes"]) == 0
    out = capsys.readouterr().out
    assert "Free GPUs per node" in out and "GPUs per cluster" not in out


def test_explain_json_when_no_cluster_answers(fleet_file: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["explain", "--fleet", fleet_file, "--gpus", "T4:2", "--org", "rise", "-o", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["summary"].startswith("no cluster can take T4:2")
    assert {r["verdict"] for r in document["rows"]} == {"skipped"}
    assert document["preempts"] == []


def test_explain_a_gang(fleet_file: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["explain", "--fleet", fleet_file, "--gpus", "T4:2", "--org", "rise",
                     "--nodes", "2", "-o", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["summary"].startswith("no cluster can take a gang of 2 x T4:2")
