"""The sandbox's clusters as Airflow connections: one ``kubernetes`` connection per (org,
cluster) the fleet names, and each cluster's own (the capacity reader).

Each connection carries its kubeconfig inline (cncf-kubernetes' ``kube_config`` extra): one
cluster, one ServiceAccount token, the org's namespace. So an Airflow needs no kubeconfig
file, and an org's token is only where that org's connections are. The names are the
fleet's (``clusters[].connection_id``, ``access: {connection_id: ...}``); under Airflow's
``[core] multi_team`` an org's connections are its team's (``AIRFLOW_CONN__<TEAM>___<ID>``),
the clusters' own are every team's.

The pure part (``grants``, ``environment``, ``for_team_process``) is unit-tested; ``build``
asks the sandbox's clusters for the tokens (TokenRequest, as for its kubeconfig).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from airflow_provider_skyshare.fleet import Fleet
from airflow_provider_skyshare.names import (
    ORG_SERVICE_ACCOUNT,
    READER_NAMESPACE,
    READER_SERVICE_ACCOUNT,
)

CONN_PREFIX = "AIRFLOW_CONN_"
TEAM_SEP = "___"  # Airflow's: AIRFLOW_CONN__<TEAM>___<CONN_ID>


@dataclass(frozen=True)
class Grant:
    """One connection: whose ServiceAccount token it holds, where, and which team reads it."""

    conn_id: str
    cluster: str
    namespace: str
    service_account: str
    team: str | None = None  # None: every team (a cluster's own, or no multi-team)

    @property
    def account(self) -> tuple[str, str, str]:
        """The ServiceAccount whose token it holds: one token per account and cluster."""
        return self.cluster, self.namespace, self.service_account


@dataclass(frozen=True)
class Endpoint:
    """How a cluster's API server is reached: its URL and CA certificate (base64 PEM)."""

    server: str
    ca_data: str


def grants(fleets: Iterable[Fleet], multi_team: bool = False) -> list[Grant]:
    """Every connection the fleets name, once: each cluster's own, then each org's where
    it may run (owner or borrower). Clusters reached through kubeconfig contexts name none."""
    found: dict[str, Grant] = {}
    for fleet in fleets:
        for c in fleet.clusters.values():
            if c.connection_id:
                found.setdefault(c.connection_id, Grant(
                    c.connection_id, c.name, READER_NAMESPACE, READER_SERVICE_ACCOUNT))
            for org in fleet.orgs if c.access is not None else ():
                conn_id = c.access_of(org).connection_id
                if conn_id and c.tier_for(org) is not None:
                    found.setdefault(conn_id, Grant(conn_id, c.name, c.namespace_of(org),
                                                    ORG_SERVICE_ACCOUNT,
                                                    org if multi_team else None))
    return list(found.values())


def env_name(conn_id: str, team: str | None = None) -> str:
    """The environment variable Airflow reads the connection from."""
    if team is None:
        return CONN_PREFIX + conn_id.upper()
    return f"{CONN_PREFIX}_{team.upper()}{TEAM_SEP}{conn_id.upper()}"


def kubeconfig(grant: Grant, endpoint: Endpoint, token: str) -> dict[str, Any]:
    """A kubeconfig of one context: the grant's cluster, token and namespace."""
    name = grant.conn_id
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": name,
        "clusters": [{"name": grant.cluster, "cluster": {
            "server": endpoint.server, "certificate-authority-data": endpoint.ca_data}}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": grant.cluster, "user": name,
                                                "namespace": grant.namespace}}],
    }


def connection(grant: Grant, endpoint: Endpoint, token: str) -> str:
    """The connection in Airflow's JSON form, its kubeconfig inline (``kube_config``)."""
    extra = {"kube_config": json.dumps(kubeconfig(grant, endpoint, token)),
             "namespace": grant.namespace}
    return json.dumps({"conn_type": "kubernetes", "extra": extra})


def environment(grants_: Iterable[Grant], endpoints: Mapping[str, Endpoint],
                tokens: Mapping[tuple[str, str, str], str]) -> dict[str, str]:
    """``AIRFLOW_CONN_*`` name -> connection JSON, for every grant."""
    return {env_name(g.conn_id, g.team): connection(g, endpoints[g.cluster], tokens[g.account])
            for g in grants_}


def for_team_process(env: Mapping[str, str], team: str | None) -> dict[str, str]:
    """What a process that runs only `team`'s code (its triggerer) is given: its team's
    connections under their plain names, and no other team's.

    Airflow 3.3's triggerer looks connections up without the team (only a worker's task asks
    the API server, which knows the task's team), so a team's triggerer must hold its team's
    connections itself (docs/operations.md).
    """
    mine = f"{CONN_PREFIX}_{team.upper()}{TEAM_SEP}" if team else None
    out = {}
    for name, value in env.items():
        if mine and name.startswith(mine):
            out[CONN_PREFIX + name.removeprefix(mine)] = value
        elif not (name.startswith(CONN_PREFIX + "_") and TEAM_SEP in name):
            out[name] = value
    return out


def build(fleet_paths: Iterable[str] = (), multi_team: bool = False) -> dict[str, str]:
    """The connections of the running sandbox for these fleets (default: those it was
    started with), each with a fresh token of its ServiceAccount."""
    from airflow_provider_skyshare.sandbox import cluster, tenants

    state = cluster.State.load()
    if not state.clusters:
        raise cluster.SandboxError("the sandbox is not up. Fix: skyshare-sandbox up")
    fleet_paths = list(fleet_paths)
    fleets = tenants.fleets(fleet_paths, {}) if fleet_paths else state.tenant_fleets()
    found = grants(fleets, multi_team)
    missing = sorted({g.cluster for g in found} - set(state.clusters))
    if missing:
        raise cluster.SandboxError(
            f"the fleet names clusters the sandbox does not have: {', '.join(missing)}. Fix: "
            f"skyshare-sandbox up --cluster {missing[0]} --fleet FILE")
    endpoints = {n: Endpoint(cluster.apiserver_url(state, n), cluster.ca_data())
                 for n in {g.cluster for g in found}}
    tokens = {account: _token(state, *account) for account in {g.account for g in found}}
    return environment(found, endpoints, tokens)


def _token(state: Any, name: str, namespace: str, service_account: str) -> str:
    from kubernetes.client.exceptions import ApiException

    from airflow_provider_skyshare.sandbox import cluster, tenants

    credential = tenants.Credential(service_account, name, namespace, service_account)
    try:
        return tenants.request_token(cluster.api_client(state, name), credential)
    except ApiException as exc:
        if exc.status != 404:
            raise
        raise cluster.SandboxError(
            f"{name}: no ServiceAccount {namespace}/{service_account}: the fleet's orgs are not "
            "set up there. Fix: skyshare-sandbox up --fleet FILE") from None
