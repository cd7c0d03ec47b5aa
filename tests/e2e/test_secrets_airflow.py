"""Credentials of the clusters never leak into Airflow (runs after the scenarios)."""

from __future__ import annotations

import pytest

from scripts.scenario import Shape

pytestmark = pytest.mark.e2e


def test_secrets_never_reach_logs_xcom_or_events(airflow_server, kube_env):
    """Client keys, certificates and tokens of the kubeconfig, and the tokens of the Airflow's
    connections, appear in no task log or XCom."""
    import base64

    import yaml

    with open(kube_env) as fh:
        cfg = yaml.safe_load(fh)
    secrets = set()
    for user in cfg.get("users") or []:
        for key in ("client-key-data", "client-certificate-data", "token"):
            value = (user.get("user") or {}).get(key)
            if value and key == "token":  # a JWT: its signature is what only it has
                secrets.add(value[-40:])
            elif value:
                secrets.add(value[:40])
                pem = base64.b64decode(value).decode()
                body = "".join(pem.splitlines()[1:3])
                secrets.add(body[:40])
    assert secrets, "the kubeconfig has no credentials to look for"
    tokens = connection_tokens(airflow_server)  # what this Airflow reaches the clusters with
    assert tokens, "the Airflow has no connection tokens to look for"
    secrets |= tokens
    found = []
    for path in af_files(airflow_server.home):
        text = path.read_text(errors="replace")
        found += [f"{path}: {s[:12]}..." for s in secrets if s in text]
    for where, text in db_texts(airflow_server):
        found += [f"{where}: {s[:12]}..." for s in secrets if s in text]
    assert not found, found


def connection_tokens(af) -> set[str]:
    """The ServiceAccount tokens inside the Airflow's connections (their inline kubeconfig)."""
    import json

    import yaml

    found = set()
    for value in af.connections.values():
        config = yaml.safe_load(json.loads(value)["extra"]["kube_config"])
        found |= {u["user"]["token"][-40:] for u in config["users"]}
    return found


def db_texts(af):
    """Where a credential could land in a PostgreSQL metadata DB (the production shape; the
    standalone shape's SQLite file is read whole by af_files)."""
    if af.shape is not Shape.PRODUCTION:
        return
    for table, column in (("xcom", "value"), ("trigger", "kwargs"),
                          ("task_instance", "next_kwargs"), ("log", "extra"),
                          ("dag_run", "conf")):
        for (value,) in af.db(f"SELECT CAST({column} AS TEXT) FROM {table}"):
            yield f"{table}.{column}", value or ""


def af_files(home):
    """Task logs, component logs, and the SQLite DB (XCom, trigger kwargs and events)."""
    yield from (p for p in (home / "logs").rglob("*") if p.is_file())
    yield from home.glob("*.log")
    yield from home.glob("*.db")
