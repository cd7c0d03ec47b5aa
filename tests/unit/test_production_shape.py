"""The production-shaped test bed's plan and its errors, without starting anything."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from scripts import production, services
from scripts.scenario import Airflow, Shape
from scripts.services import ServiceError, Services


def bed(tmp_path: Path) -> Airflow:
    dags = Path(__file__).resolve().parents[2] / "dags"
    return Airflow(home=tmp_path / "home", port=18080, dags_folder=dags, shape=Shape.PRODUCTION)


def test_two_of_each_component_and_two_triggerers_per_trigger_queue(tmp_path):
    names = [c.name for c in production.components(bed(tmp_path))]
    assert names == ["api-server", "dag-processor", "scheduler-1", "scheduler-2", "worker-1",
                     "worker-2", "triggerer-global-1", "triggerer-global-2", "triggerer-rise-1",
                     "triggerer-rise-2", "triggerer-bair-1", "triggerer-bair-2"]
    comps = {c.name: c for c in production.components(bed(tmp_path))}
    assert comps["triggerer-rise-2"].args == ("triggerer", "--team-name", "rise")
    assert comps["worker-1"].args[:2] == ("celery", "worker")
    ports = [dict(c.env).get("AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT") for c in comps.values()
             if c.name.startswith("worker-")]
    assert len(set(ports)) == 2  # two workers on one machine: two log servers


def test_a_component_is_found_again_by_name_to_restart_it(tmp_path):
    af = bed(tmp_path)
    assert production.by_name(af, "triggerer-bair-7").args == ("triggerer", "--team-name", "bair")
    assert production.by_name(af, "triggerer-global-3").args == ("triggerer",)
    with pytest.raises(KeyError, match="no Airflow component named 'nope'"):
        production.by_name(af, "nope")


def test_every_component_shares_the_database_broker_and_secrets(tmp_path):
    af = bed(tmp_path)
    first, again = af.env(), af.env()
    for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__BROKER_URL",
                "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY"):
        assert first[key] and first[key] == again[key], key
    assert first["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert "@127.0.0.1:" in first["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert first["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://127.0.0.1:")
    assert first["AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE"] == "True"
    for name in ("services.json", "secrets.env"):  # passwords and keys: the owner's only
        assert stat.S_IMODE((af.home / name).stat().st_mode) == 0o600, name


def test_missing_servers_without_apt_say_what_to_install(monkeypatch):
    monkeypatch.setattr(services, "_found", lambda name: False)
    monkeypatch.setattr(services, "_is_root", lambda: False)
    with pytest.raises(ServiceError, match=r"sudo apt-get install postgresql redis-server"):
        services.ensure_installed()


def test_a_failed_install_says_which_command_failed(monkeypatch):
    class Done:
        returncode, stdout, stderr = 100, "", "E: Unable to locate package redis-server"

    monkeypatch.setattr(services, "_found", lambda name: name == "postgres")
    monkeypatch.setattr(services, "_is_root", lambda: True)
    monkeypatch.setattr(services.shutil, "which", lambda name: "/usr/bin/apt-get")
    monkeypatch.setattr(services.subprocess, "run", lambda cmd, **kw: Done())
    with pytest.raises(ServiceError, match=r"`apt-get update -qq` failed \(100\): E: Unable"):
        services.ensure_installed()


def test_ports_and_password_are_kept_for_a_restart(tmp_path):
    made = Services.load_or_new(tmp_path)
    assert Services.load_or_new(tmp_path) == made
    assert made.postgres_port != made.redis_port and len(made.password) >= 20
    assert made.pgdata != Services.load_or_new(tmp_path / "other").pgdata  # one per home
