"""What the fleet implies on one cluster: each org's namespace, credential, queues and tier.

Pure: ``objects(fleet, cluster)`` returns the Kubernetes objects a platform team applies
(``skyshare manifests --cluster NAME``) and the sandbox applies, so the fleet file is the one
source of who may use which tier where. The layers (docs/security.md):

- each org that may use the cluster gets a namespace labelled with the org and its tier
  there (owner on its own clusters, borrower where lent), a ServiceAccount ``skyshare`` and a
  Role limited to that namespace's pods;
- that namespace holds only the LocalQueue(s) of its tier;
- the ValidatingAdmissionPolicy ``skyshare-tier`` refuses any pod in such a namespace whose
  queue, Kueue priority class or PriorityClass is above the namespace's tier, whoever sends it;
- the cluster's own credential (ServiceAccount ``skyshare-operator`` in ``skyshare-system``)
  only reads: nodes and pods for free GPUs, Kueue's objects, the policy binding.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_skyshare.fleet import BORROWER, OWNER, Cluster, Fleet
from airflow_provider_skyshare.names import (
    NS_ORG_LABEL,
    NS_TIER_LABEL,
    ORG_SERVICE_ACCOUNT,
    PRIORITY_LABEL,
    QUEUE_LABEL,
    READER_NAMESPACE,
    READER_SERVICE_ACCOUNT,
    TIER_POLICY,
)

RBAC = "rbac.authorization.k8s.io/v1"
ADMISSION = "admissionregistration.k8s.io/v1"
KUEUE = "kueue.x-k8s.io/v1beta2"
POD_ROLE = "skyshare-pods"
READ = ["get", "list", "watch"]
# What a tier may use on a cluster: its own values, and those of every lower tier.
_AT_OR_BELOW = {OWNER: (OWNER, BORROWER), BORROWER: (BORROWER,)}


def objects(fleet: Fleet, cluster: Cluster) -> list[dict[str, Any]]:
    """Every object, in an order that applies cleanly (namespaces before what is in them)."""
    out = reader()
    for namespace, orgs in namespaces(fleet, cluster).items():
        out += org_namespace(cluster, namespace, orgs)
    if cluster.enforced:
        out += tier_policy(cluster)
    return out


def namespaces(fleet: Fleet, cluster: Cluster) -> dict[str, list[str]]:
    """namespace -> the orgs that use it (one each where the cluster is enforced)."""
    found: dict[str, list[str]] = {}
    for org in fleet.orgs:
        if cluster.tier_for(org) is not None:
            found.setdefault(cluster.namespace_of(org), []).append(org)
    return found


def _meta(name: str, namespace: str | None = None, **labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    if labels:
        meta["labels"] = labels
    return meta


def _sa_subject(name: str, namespace: str) -> dict[str, str]:
    return {"kind": "ServiceAccount", "name": name, "namespace": namespace}


def reader() -> list[dict[str, Any]]:
    """The cluster's own credential: reads capacity (and, where the cluster is not enforced,
    runs the pods too: org_namespace binds it there)."""
    rules = [
        {"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": READ},
        {"apiGroups": ["kueue.x-k8s.io"], "verbs": READ,
         "resources": ["workloads", "clusterqueues", "localqueues", "resourceflavors",
                       "workloadpriorityclasses"]},
        {"apiGroups": ["scheduling.k8s.io"], "resources": ["priorityclasses"], "verbs": READ},
        {"apiGroups": ["admissionregistration.k8s.io"], "verbs": ["get"],
         "resources": ["validatingadmissionpolicybindings", "validatingadmissionpolicies"]},
    ]
    name = READER_SERVICE_ACCOUNT
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(READER_NAMESPACE)},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(name, READER_NAMESPACE)},
        {"apiVersion": RBAC, "kind": "ClusterRole", "metadata": _meta(f"{name}-read"),
         "rules": rules},
        {"apiVersion": RBAC, "kind": "ClusterRoleBinding", "metadata": _meta(f"{name}-read"),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": f"{name}-read"},
         "subjects": [_sa_subject(name, READER_NAMESPACE)]},
    ]


def org_namespace(cluster: Cluster, namespace: str, orgs: list[str]) -> list[dict[str, Any]]:
    """One org's namespace (or, where not enforced, the namespace the orgs share)."""
    tiers = sorted({t.name for t in map(cluster.tier_for, orgs) if t is not None})
    labels = {NS_ORG_LABEL: orgs[0], NS_TIER_LABEL: tiers[0]} if cluster.enforced else {}
    runner = (_sa_subject(ORG_SERVICE_ACCOUNT, namespace) if cluster.enforced
              else _sa_subject(READER_SERVICE_ACCOUNT, READER_NAMESPACE))
    out: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(namespace, **labels)},
    ]
    if cluster.enforced:
        out.append({"apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": _meta(ORG_SERVICE_ACCOUNT, namespace)})
    out += [
        {"apiVersion": RBAC, "kind": "Role", "metadata": _meta(POD_ROLE, namespace),
         "rules": [
             {"apiGroups": [""], "resources": ["pods"],
              "verbs": ["create", "get", "list", "watch", "delete"]},
             {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
             # how a pod ended when no follower saw it (evidence.py)
             {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list"]},
             # a gang's headless Service, so its members find each other (gang.py)
             {"apiGroups": [""], "resources": ["services"], "verbs": ["create", "get", "delete"]},
             # the claim on a task's next attempt (claims.py)
             {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
              "verbs": ["create", "get", "list", "update", "delete"]},
         ]},
        {"apiVersion": RBAC, "kind": "RoleBinding", "metadata": _meta(POD_ROLE, namespace),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": POD_ROLE},
         "subjects": [runner]},
    ]
    for tier in tiers:
        queue = cluster.tier(tier).local_queue
        out.append({"apiVersion": KUEUE, "kind": "LocalQueue", "metadata": _meta(queue, namespace),
                    "spec": {"clusterQueue": queue}})
    return out


def _allowed(cluster: Cluster, field: str) -> str:
    """A CEL map: tier -> the values of `field` that tier may use on this cluster."""
    def values(tier: str) -> str:
        names = dict.fromkeys(getattr(cluster.tier(t), field) for t in _AT_OR_BELOW[tier])
        return "[" + ", ".join(f"'{n}'" for n in names) + "]"

    return "{" + ", ".join(f"'{t}': {values(t)}" for t in _AT_OR_BELOW) + "}"


def _check(label: str, allowed: str, what: str, *, required: bool) -> dict[str, str]:
    present = f"'{label}' in variables.labels"
    ok = f"variables.labels['{label}'] in variables.{allowed}"
    return {
        "expression": f"{present} && {ok}" if required else f"!({present}) || {ok}",
        "messageExpression": (
            f"'namespace ' + namespaceObject.metadata.name + ' may use the ' + variables.tier"
            f" + ' tier on this cluster: {what} must be one of ' + variables.{allowed}.join(', ')"
        ),
        "reason": "Forbidden",
    }


def _variables(cluster: Cluster) -> list[dict[str, str]]:
    """The namespace's tier, the pod's labels, and what that tier may use here."""
    def allowed(field: str) -> str:
        return f"{_allowed(cluster, field)}[variables.tier]"

    return [
        {"name": "tier", "expression": f"namespaceObject.metadata.labels['{NS_TIER_LABEL}']"},
        {"name": "labels",
         "expression": "has(object.metadata.labels) ? object.metadata.labels : {}"},
        {"name": "queues", "expression": allowed("local_queue")},
        {"name": "workloadPriorities", "expression": allowed("workload_priority_class")},
        {"name": "priorities", "expression": allowed("priority_class")},
    ]


def _validations() -> list[dict[str, str]]:
    """Each a rule a pod of an org's namespace must meet, with what to fix when it does not."""
    def rule(expression: str, message: str) -> dict[str, str]:
        return {"expression": expression, "message": message, "reason": "Forbidden"}

    return [
        _check(QUEUE_LABEL, "queues", f"label {QUEUE_LABEL}", required=True),
        _check(PRIORITY_LABEL, "workloadPriorities", f"label {PRIORITY_LABEL}", required=False),
        {"expression": "!has(object.spec.priorityClassName) || "
                       "object.spec.priorityClassName in variables.priorities",
         "messageExpression": (
             "'namespace ' + namespaceObject.metadata.name + ' may use the ' + variables.tier"
             " + ' tier on this cluster: spec.priorityClassName must be one of ' + "
             "variables.priorities.join(', ')"),
         "reason": "Forbidden"},
        rule(f"!has(object.spec.serviceAccountName) || "
             f"object.spec.serviceAccountName != '{ORG_SERVICE_ACCOUNT}'",
             f"a pod may not run as ServiceAccount {ORG_SERVICE_ACCOUNT}: it is the org's "
             "credential, not a workload's"),
        # Kueue leaves a pod alone when a Job or another kind it manages owns it: a made-up
        # owner would run the pod outside every quota.
        rule("!has(object.metadata.ownerReferences)",
             "a pod of an org's namespace may not name an owner: create it bare, as the "
             "provider does (Kueue would not queue it)"),
    ]


def tier_policy(cluster: Cluster) -> list[dict[str, Any]]:
    """The admission policy that holds every pod of an org's namespace to its tier."""
    policy = {
        "apiVersion": ADMISSION, "kind": "ValidatingAdmissionPolicy",
        "metadata": _meta(TIER_POLICY),
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                # CREATE only: an org cannot change a pod afterwards (its Role has no update
                # or patch), and checking Kueue's own updates (ungating, finalizers) would
                # leave a pod made before the policy unable to ever go away.
                "apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                "resources": ["pods"]}]},
            "variables": _variables(cluster),
            "validations": _validations(),
        },
    }
    binding = {
        "apiVersion": ADMISSION, "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": _meta(TIER_POLICY),
        "spec": {"policyName": TIER_POLICY, "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchExpressions": [
                     {"key": NS_TIER_LABEL, "operator": "Exists"}]}}},
    }
    return [policy, binding]


def enforcement_problem(binding: dict[str, Any] | str, policy: dict[str, Any] | str) -> str | None:
    """Why a cluster's tier policy does not hold (each argument: the object read from the
    cluster, or why it could not be read), or None when it does."""
    for found in (binding, policy):
        if isinstance(found, str):
            return found
    spec = binding.get("spec") or {}  # type: ignore[union-attr]
    if spec.get("policyName") != TIER_POLICY:
        return f"binding {TIER_POLICY} binds {spec.get('policyName')!r}, not {TIER_POLICY}"
    if "Deny" not in (spec.get("validationActions") or []):
        return f"binding {TIER_POLICY} does not Deny (validationActions: " \
               f"{spec.get('validationActions')})"
    return None
