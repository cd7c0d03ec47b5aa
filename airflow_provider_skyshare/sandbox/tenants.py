"""The sandbox's orgs: what each fleet implies on its clusters, and each org's credential.

The sandbox applies exactly ``tenancy.objects`` (what ``skyshare manifests`` prints) for every
fleet it was started with (``skyshare-sandbox up --fleet FILE``); a cluster no fleet names is
its own org's (rise owns rise, bair owns bair: the seed). Credentials are ServiceAccount
tokens (TokenRequest), written to the kubeconfig as contexts ``ORG@CLUSTER`` (each org's, in
its namespace) and ``CLUSTER-operator`` (the cluster's own, read-only where enforced).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from airflow_provider_skyshare import fleetfile, tenancy
from airflow_provider_skyshare.fleet import Fleet, parse
from airflow_provider_skyshare.names import (
    ORG_SERVICE_ACCOUNT,
    READER_NAMESPACE,
    READER_SERVICE_ACCOUNT,
)

TOKEN_SECONDS = 10 * 365 * 86400  # a throwaway sandbox: tokens outlive it


@dataclass(frozen=True)
class Credential:
    """One kubeconfig user and context: a ServiceAccount's token on one cluster."""

    context: str
    cluster: str
    namespace: str
    service_account: str


def own_fleet(clusters: Mapping[str, Mapping[str, Any]]) -> Fleet:
    """Each cluster owned by an org of its name, each org with its own credential."""
    return parse({
        "version": 1,
        "defaults": {"access": {"context": "{org}@{cluster}"}},
        "orgs": [{"name": n} for n in clusters],
        "clusters": [{"name": n, "owner": n, "context": f"{n}-operator",
                      "gpu_products": {c["product"]: c["product"]}}
                     for n, c in clusters.items()],
    }, source="<sandbox>")


def fleets(paths: Iterable[str], clusters: Mapping[str, Mapping[str, Any]]) -> list[Fleet]:
    """The fleets given to `up`, then the sandbox's own one for clusters none of them names."""
    given = [fleetfile.load(p) for p in paths]
    named = {c for f in given for c in f.clusters}
    rest = {n: c for n, c in clusters.items() if n not in named}
    return given + ([own_fleet(rest)] if rest else [])


def objects(fleets_: Iterable[Fleet], cluster: str) -> list[dict[str, Any]]:
    """Every fleet's objects for `cluster`, once each; namespaces get their `default`
    ServiceAccount (no ServiceAccount controller runs here to make it)."""
    out: dict[tuple, dict[str, Any]] = {}
    for fleet in fleets_:
        if cluster not in fleet.clusters:
            continue
        for obj in tenancy.objects(fleet, fleet.clusters[cluster]):
            out[_key(obj)] = obj
            if obj["kind"] == "Namespace":
                sa = {"apiVersion": "v1", "kind": "ServiceAccount",
                      "metadata": {"name": "default", "namespace": obj["metadata"]["name"]}}
                out[_key(sa)] = sa
    return list(out.values())


def _key(obj: Mapping[str, Any]) -> tuple:
    return obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"]


def credentials(fleets_: Iterable[Fleet], cluster: str) -> list[Credential]:
    """The contexts of `cluster`, named as the fleets name them: its own credential
    (default NAME-operator), then each org's where enforced (e.g. ORG@NAME)."""
    own = f"{cluster}-operator"
    found = {own: Credential(own, cluster, READER_NAMESPACE, READER_SERVICE_ACCOUNT)}
    for fleet in fleets_:
        c = fleet.clusters.get(cluster)
        if c is None:
            continue
        if c.context and c.context != own:
            found[c.context] = Credential(c.context, cluster, READER_NAMESPACE,
                                          READER_SERVICE_ACCOUNT)
        for org in fleet.orgs if c.enforced else ():
            name = c.access_of(org).context
            if c.tier_for(org) is not None and name:  # a connection_id: Airflow's, not ours
                found[name] = Credential(name, cluster, c.namespace_of(org), ORG_SERVICE_ACCOUNT)
    return list(found.values())


def request_token(api: Any, credential: Credential) -> str:
    """A token of the credential's ServiceAccount (TokenRequest, as `kubectl create token`)."""
    from kubernetes import client

    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": TOKEN_SECONDS}}
    made = client.CoreV1Api(api).create_namespaced_service_account_token(
        credential.service_account, credential.namespace, body)
    return made.status.token
