"""What a fleet implies on one cluster (tenancy.objects): each org's place and the policy.

The policy itself is exercised by the API server in tests/integration/test_tenancy.py; here
the objects are checked against the fleet they come from.
"""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_skyshare import tenancy, views
from airflow_provider_skyshare.fleet import Fleet, parse


def fleet(**cluster_extra: Any) -> Fleet:
    return parse({
        "defaults": {"gpu_products": {"T4": "Tesla-T4"},
                     "access": {"context": "{org}@{cluster}"}},
        "orgs": [{"name": "rise", "bundles": ["rise"]}, {"name": "bair", "bundles": ["bair"]},
                 {"name": "mit"}],
        "clusters": [{"name": "rise", "owner": "rise", "context": "rise-operator"},
                     {"name": "bair", "owner": "bair", "context": "bair-operator",
                      **cluster_extra}],
    })


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def test_each_org_gets_its_namespace_labelled_with_its_tier_there() -> None:
    objects = tenancy.objects(fleet(), fleet().clusters["bair"])
    namespaces = {o["metadata"]["name"]: o["metadata"].get("labels", {})
                  for o in by_kind(objects, "Namespace")}
    assert namespaces == {
        "skyshare-system": {},
        "skyshare-rise": {"skyshare.dev/org": "rise", "skyshare.dev/tier": "borrower"},
        "skyshare-bair": {"skyshare.dev/org": "bair", "skyshare.dev/tier": "owner"},
        "skyshare-mit": {"skyshare.dev/org": "mit", "skyshare.dev/tier": "borrower"},
    }
    queues = {(o["metadata"]["namespace"], o["metadata"]["name"], o["spec"]["clusterQueue"])
              for o in by_kind(objects, "LocalQueue")}
    assert queues == {("skyshare-rise", "skyshare-borrower", "skyshare-borrower"),
                      ("skyshare-bair", "skyshare-owner", "skyshare-owner"),
                      ("skyshare-mit", "skyshare-borrower", "skyshare-borrower")}


def test_an_orgs_role_is_its_namespaces_pods_and_bound_to_its_own_account() -> None:
    objects = tenancy.objects(fleet(), fleet().clusters["bair"])
    roles = by_kind(objects, "Role")
    assert {r["metadata"]["namespace"] for r in roles} == {"skyshare-rise", "skyshare-bair",
                                                           "skyshare-mit"}
    assert all({res for rule in r["rules"] for res in rule["resources"]}
               == {"pods", "pods/log", "events", "leases", "services"} for r in roles)
    # services: a gang's headless Service (gang.py); never listed, watched or changed
    assert all(set(rule["verbs"]) == {"create", "get", "delete"} for r in roles
               for rule in r["rules"] if rule["resources"] == ["services"])
    # events and leases: read and claim only, never anything cluster-wide or other kinds
    assert all(set(rule["verbs"]) <= {"get", "list"} for r in roles for rule in r["rules"]
               if rule["resources"] == ["events"])
    for binding in by_kind(objects, "RoleBinding"):
        ns = binding["metadata"]["namespace"]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "skyshare",
                                        "namespace": ns}]
    reader = next(o for o in by_kind(objects, "ClusterRole"))
    assert all(set(rule["verbs"]) <= {"get", "list", "watch"} for rule in reader["rules"])


def test_a_cluster_not_lent_has_only_its_owner() -> None:
    f = fleet(lend=False)
    objects = tenancy.objects(f, f.clusters["bair"])
    assert [o["metadata"]["name"] for o in by_kind(objects, "Namespace")] == [
        "skyshare-system", "skyshare-bair"]


def test_the_policy_allows_each_tier_its_own_values_and_the_lower_ones() -> None:
    f = fleet(tiers={"owner": {"local_queue": "bair-prod", "priority_class": "bair-high",
                               "workload_priority_class": "bair-high"}})
    policy, binding = by_kind(tenancy.objects(f, f.clusters["bair"]),
                              "ValidatingAdmissionPolicy") + by_kind(
        tenancy.objects(f, f.clusters["bair"]), "ValidatingAdmissionPolicyBinding")
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    assert variables["queues"] == ("{'owner': ['bair-prod', 'skyshare-borrower'], "
                                   "'borrower': ['skyshare-borrower']}[variables.tier]")
    assert variables["priorities"].startswith("{'owner': ['bair-high', 'low-priority']")
    checks = [v["expression"] for v in policy["spec"]["validations"]]
    assert checks[0].startswith("'kueue.x-k8s.io/queue-name' in variables.labels && ")  # needed
    assert checks[1].startswith("!('kueue.x-k8s.io/priority-class' in variables.labels) || ")
    assert checks[3] == ("!has(object.spec.serviceAccountName) || "
                         "object.spec.serviceAccountName != 'skyshare'")  # not the org's key
    assert checks[4] == "!has(object.metadata.ownerReferences)"  # Kueue skips owned pods
    assert policy["spec"]["failurePolicy"] == "Fail"
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"] == [
        {"key": "skyshare.dev/tier", "operator": "Exists"}]


def test_without_access_the_orgs_share_the_cluster_credential_and_no_policy_is_made() -> None:
    f = parse({"defaults": {"gpu_products": {"T4": "Tesla-T4"}, "namespace": "skyshare"},
               "orgs": [{"name": "rise"}, {"name": "bair"}],
               "clusters": [{"name": "bair", "owner": "bair", "context": "kind-bair"}]})
    objects = tenancy.objects(f, f.clusters["bair"])
    assert not by_kind(objects, "ValidatingAdmissionPolicy")
    shared = [o for o in by_kind(objects, "Namespace") if o["metadata"]["name"] == "skyshare"]
    assert shared and "labels" not in shared[0]["metadata"]
    assert {o["metadata"]["name"] for o in by_kind(objects, "LocalQueue")} == {
        "skyshare-owner", "skyshare-borrower"}
    assert by_kind(objects, "RoleBinding")[0]["subjects"] == [
        {"kind": "ServiceAccount", "name": "skyshare-operator", "namespace": "skyshare-system"}]


@pytest.mark.parametrize(("only", "rows"), [
    ("rise", [("rise", "rise", "owner", "skyshare-rise", "rise@rise"),
              ("rise", "bair", "borrower", "skyshare-rise", "rise@bair")]),
    ("mit", [("mit", "rise", "borrower", "skyshare-mit", "mit@rise"),
             ("mit", "bair", "borrower", "skyshare-mit", "mit@bair")]),
])
def test_the_tier_table_says_per_org_and_cluster_what_it_may_use(only, rows) -> None:
    found = views.tier_rows(fleet(), only=only)
    assert [(r["org"], r["cluster"], r["tier"], r["namespace"], r["credential"])
            for r in found] == rows
    assert all(r["enforced"] for r in found)
    assert "NO: shared credential" not in views.tier_table(fleet())


def test_a_policy_holds_only_with_its_binding_denying() -> None:
    f = fleet()
    policy, binding = tenancy.tier_policy(f.clusters["bair"])
    assert tenancy.enforcement_problem(binding, policy) is None
    warn = {**binding, "spec": {**binding["spec"], "validationActions": ["Warn"]}}
    assert "does not Deny" in tenancy.enforcement_problem(warn, policy)
    other = {**binding, "spec": {**binding["spec"], "policyName": "x"}}
    assert "binds 'x'" in tenancy.enforcement_problem(other, policy)
    assert tenancy.enforcement_problem("no ValidatingAdmissionPolicy skyshare-tier", binding
                                       ) == "no ValidatingAdmissionPolicy skyshare-tier"
    assert tenancy.enforcement_problem(binding, "no X") == "no X"


def test_the_tier_table_says_when_a_probe_found_the_policy_missing() -> None:
    from airflow_provider_skyshare.names import NOT_ENFORCED
    from airflow_provider_skyshare.snapshot import ClusterCapacity, Snapshot

    snap = Snapshot({"bair": ClusterCapacity("bair", False, f"{NOT_ENFORCED}: no binding")})
    rows = {r["cluster"]: r for r in views.tier_rows(fleet(), only="rise", snapshot=snap)}
    assert rows["bair"]["policy_missing"] and not rows["bair"]["enforced"]
    assert rows["rise"]["enforced"] and not rows["rise"]["policy_missing"]
    assert "NO: policy missing" in views.tier_table(fleet(), only="rise", snapshot=snap)
