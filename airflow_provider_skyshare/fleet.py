"""The fleet: which org owns which cluster, how each cluster is reached, and the tiers.

Pure: parses and validates a dict (from YAML) into frozen dataclasses. Every error names
the file, the key and the fix, because a fleet file is edited by people, not programs.

A cluster's own credential (``context``/``connection_id``) reads capacity; each org reaches
it with its own credential (``access``, a template over ``{org}`` and ``{cluster}``) in its
own namespace (``namespace``, also a template). ``Fleet.for_org`` resolves both for one org:
everything that creates, follows or deletes a task's pods works on that view.
"""

from __future__ import annotations

import difflib
import enum
import functools
import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

OWNER = "owner"
BORROWER = "borrower"
TIER_NAMES = (OWNER, BORROWER)
ANYONE = "*"
DEFAULT_NAMESPACE = "skyshare-{org}"
# The cluster's and the provider's own (tenancy.py): never an org's, whatever its name.
RESERVED_NAMESPACES = frozenset({"default", "kube-system", "kube-public", "kube-node-lease",
                                 "kueue-system", "skyshare-system"})


class Identity(str, enum.Enum):
    """Where a task's org comes from (``policy.identity``; docs/security.md)."""

    AIRFLOW = "airflow"  # the team of the DAG's bundle, else orgs[].bundles: the platform's
    OWNER = "owner"  # the DAG's org= and its owner/user= against orgs[].members: trusts authors

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # what placement.parse_gpus accepts
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


class FleetError(ValueError):
    """A fleet file (or fleet dict) that cannot be used, with the key at fault and the fix."""

    def __init__(self, source: str, key: str, problem: str, fix: str) -> None:
        self.source, self.key, self.problem, self.fix = source, key, problem, fix
        super().__init__(f"{source}: {key}: {problem}. Fix: {fix}")


@dataclass(frozen=True)
class Tier:
    """How work of one tier is labelled on one cluster (Kueue queue and priorities)."""

    name: str
    local_queue: str
    priority_class: str
    workload_priority_class: str


@dataclass(frozen=True)
class Org:
    name: str
    members: frozenset[str] = frozenset()
    bundles: frozenset[str] = frozenset()  # Airflow DAG bundles whose DAGs run for this org

    def admits(self, user: str | None) -> bool:
        return ANYONE in self.members or (user is not None and user in self.members)


@dataclass(frozen=True)
class Access:
    """How a cluster is reached: a kubeconfig context (and file) or an Airflow connection."""

    context: str | None = None
    kubeconfig: str | None = None
    connection_id: str | None = None

    def format(self, **names: str) -> Access:
        def fmt(v: str | None) -> str | None:
            return v.format(**names) if v is not None else None

        return Access(fmt(self.context), fmt(self.kubeconfig), fmt(self.connection_id))

    def to_dict(self) -> dict[str, str]:
        return {k: v for k, v in (("context", self.context), ("kubeconfig", self.kubeconfig),
                                  ("connection_id", self.connection_id)) if v is not None}


@dataclass(frozen=True)
class Cluster:
    name: str
    owner: str
    namespace: str
    gpu_label: str
    gpu_products: Mapping[str, str]  # alias (T4) -> node label value (Tesla-T4)
    tiers: Mapping[str, Tier]
    context: str | None = None
    kubeconfig: str | None = None
    connection_id: str | None = None
    cost_per_gpu_hour: float | None = None
    lend: bool = True
    access: Access | None = None  # each org's credential (templates); None: the cluster's own
    reader: Access | None = None  # in an org's view: the cluster's own (capacity) credential
    org: str | None = None  # in an org's view: that org

    def tier(self, name: str) -> Tier:
        return self.tiers[name]

    @property
    def enforced(self) -> bool:
        """Each org has its own credential and namespace here, so the cluster's admission
        policy holds every org to its tier (docs/security.md)."""
        return self.access is not None or self.reader is not None

    def tier_for(self, org: str) -> Tier | None:
        """The tier `org` may use here: owner on its own clusters, borrower where lent."""
        if org == self.owner:
            return self.tiers[OWNER]
        return self.tiers[BORROWER] if self.lend else None

    def namespace_of(self, org: str) -> str:
        return self.namespace.format(org=org, cluster=self.name)

    def access_of(self, org: str) -> Access:
        if self.access is None:
            return Access(self.context, self.kubeconfig, self.connection_id)
        return self.access.format(org=org, cluster=self.name)

    def as_org(self, org: str) -> Cluster:
        """This cluster as `org` reaches it: its namespace, its credential."""
        own = self.access_of(org)
        return replace(self, namespace=self.namespace_of(org), context=own.context,
                       kubeconfig=own.kubeconfig or self.kubeconfig,
                       connection_id=own.connection_id, access=None, org=org,
                       reader=Access(self.context, self.kubeconfig, self.connection_id)
                       if self.access is not None else None)

    def as_reader(self) -> Cluster:
        """This cluster through its own (read-only) credential: what capacity probes use."""
        if self.reader is None:
            return self
        return replace(self, context=self.reader.context, kubeconfig=self.reader.kubeconfig,
                       connection_id=self.reader.connection_id, reader=None)


@dataclass(frozen=True)
class Policy:
    """Fleet-wide knobs of the placement rule (see docs/concepts.md)."""

    borrow_cooldown_seconds: float = 300.0
    pin_owned_after_preemptions: int = 2
    probe_timeout_seconds: float = 5.0
    identity: Identity = Identity.AIRFLOW


@dataclass(frozen=True)
class Fleet:
    source: str
    orgs: Mapping[str, Org]
    clusters: Mapping[str, Cluster]
    policy: Policy = field(default_factory=Policy)
    view: str | None = None  # the org this fleet is resolved for (for_org), if any
    base: Fleet | None = field(default=None, compare=False, repr=False)

    def for_org(self, org: str) -> Fleet:
        """The fleet as `org` reaches it: the clusters it may use (not those that do not lend
        to it: it has no credential there), with its namespace and credential resolved."""
        if self.base is not None:
            return self.base.for_org(org)
        self.org(org)
        clusters = {n: c.as_org(org) for n, c in self.clusters.items() if c.tier_for(org)}
        return replace(self, clusters=clusters, view=org, base=self)

    def org_of_bundle(self, bundle: str) -> Org | None:
        return next((o for o in self.orgs.values() if bundle in o.bundles), None)

    def org(self, name: str) -> Org:
        if name not in self.orgs:
            raise FleetError(
                self.source, "orgs", f"unknown org {name!r}", _choices(name, self.orgs, "org")
            )
        return self.orgs[name]

    def owned_by(self, org: str) -> list[Cluster]:
        return [c for c in self.clusters.values() if c.owner == org]

    def only(self, names: Iterable[str]) -> Fleet:
        """The fleet reduced to these clusters: what a probe of some of them is given."""
        keep = set(names)
        return replace(self, clusters={n: c for n, c in self.clusters.items() if n in keep})

    def products(self) -> set[str]:
        return {p for c in self.clusters.values() for p in c.gpu_products}

    @property
    def digest(self) -> str:
        """Which version of the fleet this is (not of its view): what a deferred task keeps
        instead of the fleet, to tell whether its fleet changed since it was placed."""
        return (self.base or self)._own_digest

    @functools.cached_property
    def _own_digest(self) -> str:
        """Once per fleet object: every trigger of a restarted triggerer asks the same one."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """The normalised form; ``parse(fleet.to_dict())`` gives an equal fleet (trigger kwargs)."""
        if self.base is not None:
            return {**self.base.to_dict(), "view": self.view}
        return {
            "version": 1,
            "policy": {
                "borrow_cooldown_seconds": self.policy.borrow_cooldown_seconds,
                "pin_owned_after_preemptions": self.policy.pin_owned_after_preemptions,
                "probe_timeout_seconds": self.policy.probe_timeout_seconds,
                "identity": self.policy.identity.value,
            },
            "orgs": [{"name": o.name, "members": sorted(o.members), "bundles": sorted(o.bundles)}
                     for o in self.orgs.values()],
            "clusters": [_cluster_dict(c) for c in self.clusters.values()],
        }


def _cluster_dict(c: Cluster) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": c.name,
        "owner": c.owner,
        "namespace": c.namespace,
        "gpu_label": c.gpu_label,
        "gpu_products": dict(c.gpu_products),
        "tiers": {
            t.name: {
                "local_queue": t.local_queue,
                "priority_class": t.priority_class,
                "workload_priority_class": t.workload_priority_class,
            }
            for t in c.tiers.values()
        },
        "lend": c.lend,
    }
    for key in ("context", "kubeconfig", "connection_id", "cost_per_gpu_hour"):
        if getattr(c, key) is not None:
            d[key] = getattr(c, key)
    if c.access is not None:
        d["access"] = c.access.to_dict()
    return d


DEFAULT_TIERS = {
    OWNER: {
        "local_queue": "skyshare-owner",
        "priority_class": "high-priority",
        "workload_priority_class": "high-priority",
    },
    BORROWER: {
        "local_queue": "skyshare-borrower",
        "priority_class": "low-priority",
        "workload_priority_class": "low-priority",
    },
}
DEFAULTS = {
    "namespace": DEFAULT_NAMESPACE,
    "gpu_label": "nvidia.com/gpu.product",
    "tiers": DEFAULT_TIERS,
}

_TOP_KEYS = {"version", "defaults", "policy", "orgs", "clusters", "view"}
_DEFAULT_KEYS = {"namespace", "gpu_label", "gpu_products", "tiers", "kubeconfig", "lend", "access"}
_ORG_KEYS = {"name", "members", "bundles"}
_CLUSTER_KEYS = {
    "name", "owner", "context", "kubeconfig", "connection_id", "namespace", "gpu_label",
    "gpu_products", "tiers", "cost_per_gpu_hour", "lend", "access",
}
_ACCESS_KEYS = {"context", "kubeconfig", "connection_id"}
_TIER_KEYS = {"local_queue", "priority_class", "workload_priority_class"}
_POLICY_KEYS = {"borrow_cooldown_seconds", "pin_owned_after_preemptions", "probe_timeout_seconds",
                "identity"}


def _choices(value: str, options: Any, what: str) -> str:
    options = sorted(options)
    close = difflib.get_close_matches(str(value), options, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{hint}use one of the {what}s: {', '.join(options) or '(none defined)'}"


class _Reader:
    """Walks the raw dict, remembering the source for error messages."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str, fix: str) -> FleetError:
        return FleetError(self.source, key, problem, fix)

    def mapping(self, value: Any, key: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(key, f"expected a mapping, got {type(value).__name__}",
                            f"write {key} as 'name: value' pairs")
        return value

    def keys(self, value: Mapping[str, Any], allowed: set[str], key: str) -> None:
        for k in value:
            if k not in allowed:
                name = k if isinstance(k, str) and k.strip() else repr(k)  # '' must show
                raise self.fail(f"{key}.{name}" if key else name, "unknown key",
                                _choices(str(k), allowed, "key"))

    def text(self, value: Any, key: str, *, dns: bool = False) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"expected a non-empty string, got {value!r}",
                            f"set {key} to a name")
        if dns and (not _DNS_LABEL.fullmatch(value) or len(value) > 63):
            raise self.fail(key, f"{value!r} is not a valid Kubernetes name",
                            "use at most 63 lower-case letters, digits and '-', starting and "
                            "ending with a letter or digit")
        return value

    def number(self, value: Any, key: str, *, minimum: float = 0.0, integer: bool = False) -> Any:
        ok = isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)
        if ok and not integer:
            try:
                ok = math.isfinite(float(value))  # .nan/.inf (and ints too big for a float)
            except OverflowError:
                ok = False
        if not ok or value < minimum:
            kind = "a whole number" if integer else "a number"
            raise self.fail(key, f"expected {kind} >= {minimum:g}, got {value!r}",
                            f"set {key} to {kind} of at least {minimum:g}")
        return value


def parse(data: Any, source: str = "<fleet>") -> Fleet:
    """Validate a raw fleet dict. Raises FleetError only."""
    r = _Reader(source)
    if data is None:
        raise r.fail("(file)", "the fleet is empty", "define 'orgs:' and 'clusters:'")
    top = r.mapping(data, "(top level)")
    r.keys(top, _TOP_KEYS, "")
    version = top.get("version", 1)
    if version != 1:
        raise r.fail("version", f"unsupported version {version!r}", "set version: 1")

    defaults = {**DEFAULTS, **r.mapping(top.get("defaults") or {}, "defaults")}
    r.keys(defaults, _DEFAULT_KEYS, "defaults")
    policy = _policy(r, top.get("policy") or {})

    orgs = _orgs(r, top.get("orgs"))
    clusters = _clusters(r, top.get("clusters"), defaults, orgs)
    fleet = Fleet(source=source, orgs=orgs, clusters=clusters, policy=policy)
    view = top.get("view")
    if view is None:
        return fleet
    if view not in orgs:
        raise r.fail("view", f"unknown org {view!r}", _choices(str(view), orgs, "org"))
    return fleet.for_org(view)


def _orgs(r: _Reader, raw_orgs: Any) -> dict[str, Org]:
    if not isinstance(raw_orgs, list) or not raw_orgs:
        raise r.fail("orgs", "missing or not a list", "add 'orgs:' with at least one '- name: ...'")
    orgs: dict[str, Org] = {}
    for i, raw in enumerate(raw_orgs):
        key = f"orgs[{i}]"
        raw = r.mapping(raw, key)
        r.keys(raw, _ORG_KEYS, key)
        name = r.text(raw.get("name"), f"{key}.name", dns=True)
        if name in orgs:
            raise r.fail(f"{key}.name", f"duplicate org {name!r}", "give every org a unique name")
        members = _names(r, raw.get("members", []), f"{key}.members",
                         "list the Airflow users / DAG owners of this org, or ['*'] for anyone")
        bundles = _names(r, raw.get("bundles", []), f"{key}.bundles",
                         "list the names of the Airflow DAG bundles whose DAGs run for this org")
        for bundle in bundles:
            other = next((o for o in orgs.values() if bundle in o.bundles), None)
            if other is not None:
                raise r.fail(f"{key}.bundles", f"bundle {bundle!r} is mapped to org "
                             f"{other.name!r} too", "map every DAG bundle to one org only")
        orgs[name] = Org(name=name, members=frozenset(members), bundles=frozenset(bundles))
    return orgs


def _names(r: _Reader, value: Any, key: str, fix: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(m, str) and m for m in value):
        raise r.fail(key, "not a list of names", fix)
    return value


def _clusters(r: _Reader, raw_clusters: Any, defaults: Mapping[str, Any],
              orgs: Mapping[str, Org]) -> dict[str, Cluster]:
    if not isinstance(raw_clusters, list) or not raw_clusters:
        raise r.fail("clusters", "missing or not a list",
                     "add 'clusters:' with at least one '- name: ...'")
    clusters: dict[str, Cluster] = {}
    for i, raw in enumerate(raw_clusters):
        c = _cluster(r, f"clusters[{i}]", r.mapping(raw, f"clusters[{i}]"), defaults, orgs)
        if c.name in clusters:
            raise r.fail(f"clusters[{i}].name", f"duplicate cluster {c.name!r}",
                         "give every cluster a unique name")
        clusters[c.name] = c
    return clusters


def _policy(r: _Reader, raw: Any) -> Policy:
    raw = r.mapping(raw, "policy")
    r.keys(raw, _POLICY_KEYS, "policy")
    base = Policy()
    return Policy(
        borrow_cooldown_seconds=float(r.number(
            raw.get("borrow_cooldown_seconds", base.borrow_cooldown_seconds),
            "policy.borrow_cooldown_seconds")),
        pin_owned_after_preemptions=r.number(
            raw.get("pin_owned_after_preemptions", base.pin_owned_after_preemptions),
            "policy.pin_owned_after_preemptions", integer=True),
        probe_timeout_seconds=float(r.number(
            raw.get("probe_timeout_seconds", base.probe_timeout_seconds),
            "policy.probe_timeout_seconds", minimum=0.1)),
        identity=_identity(r, raw.get("identity", base.identity.value)),
    )


def _identity(r: _Reader, value: Any) -> Identity:
    try:
        return Identity(value)
    except ValueError:
        raise r.fail("policy.identity", f"unknown identity {value!r}",
                     "use 'airflow' (the org comes from the DAG's Airflow team or bundle) or "
                     "'owner' (the DAG's org= and owner, for single-team set-ups)") from None


def _cluster(
    r: _Reader, key: str, raw: Mapping[str, Any], defaults: Mapping[str, Any], orgs: Mapping[str, Org]
) -> Cluster:
    r.keys(raw, _CLUSTER_KEYS, key)
    name = r.text(raw.get("name"), f"{key}.name", dns=True)
    owner = r.text(raw.get("owner"), f"{key}.owner")
    if owner not in orgs:
        raise r.fail(f"{key}.owner", f"unknown org {owner!r}", _choices(owner, orgs, "org"))
    context, kubeconfig, connection_id = _access(r, key, name, raw, defaults)
    access = _org_access(r, key, raw.get("access", defaults.get("access")))
    namespace = _namespace(r, key, raw.get("namespace", defaults["namespace"]), name, orgs,
                           access is not None)
    gpu_label = r.text(raw.get("gpu_label", defaults["gpu_label"]), f"{key}.gpu_label")
    if not _LABEL_KEY.fullmatch(gpu_label):
        raise r.fail(f"{key}.gpu_label", f"{gpu_label!r} is not a valid label key",
                     "use a node label key such as nvidia.com/gpu.product")
    products = _products(r, key, raw.get("gpu_products", defaults.get("gpu_products")))
    tiers = _tiers(r, key, raw.get("tiers"), defaults["tiers"])
    cost = raw.get("cost_per_gpu_hour")
    if cost is not None:
        cost = float(r.number(cost, f"{key}.cost_per_gpu_hour"))
    lend = raw.get("lend", defaults.get("lend", True))
    if not isinstance(lend, bool):
        raise r.fail(f"{key}.lend", f"expected true or false, got {lend!r}",
                     "set lend: true to let other orgs borrow this cluster, false to forbid it")
    return Cluster(
        name=name, owner=owner, namespace=namespace, gpu_label=gpu_label,
        gpu_products=products, tiers=tiers, context=context, kubeconfig=kubeconfig,
        connection_id=connection_id, cost_per_gpu_hour=cost, lend=lend, access=access,
    )


def _template(r: _Reader, value: Any, key: str) -> str:
    text = r.text(value, key)
    try:
        text.format(org="o", cluster="c")
    except (KeyError, IndexError, ValueError) as exc:
        raise r.fail(key, f"{text!r} is not a template over {{org}} and {{cluster}} ({exc})",
                     "use only the placeholders {org} and {cluster}, e.g. '{org}@{cluster}'"
                     ) from None
    return text


def _org_access(r: _Reader, key: str, raw: Any) -> Access | None:
    """Each org's credential on this cluster, as templates (None: the cluster's own)."""
    if raw is None:
        return None
    raw = r.mapping(raw, f"{key}.access")
    r.keys(raw, _ACCESS_KEYS, f"{key}.access")
    values = {k: _template(r, raw[k], f"{key}.access.{k}") for k in sorted(raw)}
    if ("context" in values) == ("connection_id" in values):
        raise r.fail(f"{key}.access", "needs exactly one of 'context' and 'connection_id'",
                     "set context: '{org}@{cluster}' (a kubeconfig context per org) or "
                     "connection_id: 'skyshare_{org}_{cluster}' (an Airflow connection per org)")
    return Access(**values)


def _namespace(r: _Reader, key: str, raw: Any, name: str, orgs: Mapping[str, Org],
               enforced: bool) -> str:
    """The namespace template; every org's namespace must be a valid, separate name."""
    template = _template(r, raw, f"{key}.namespace")
    for org in orgs:
        namespace = r.text(template.format(org=org, cluster=name), f"{key}.namespace", dns=True)
        if namespace in RESERVED_NAMESPACES:
            raise r.fail(f"{key}.namespace", f"org {org!r} would get namespace {namespace!r}, "
                         "which the cluster or the provider itself uses",
                         "rename the org, or use a namespace template that avoids it")
    if enforced and "{org}" not in template and len(orgs) > 1:
        raise r.fail(f"{key}.namespace", f"{template!r} would be shared by every org, but each "
                     "org's namespace holds its own tier on this cluster",
                     f"use a template with {{org}}, e.g. {DEFAULT_NAMESPACE!r}")
    return template


def _access(r: _Reader, key: str, name: str, raw: Mapping[str, Any],
            defaults: Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
    """How the cluster is reached: (context, kubeconfig, connection_id)."""
    context = raw.get("context")
    connection_id = raw.get("connection_id")
    if context is None and connection_id is None:
        raise r.fail(key, f"cluster {name!r} has neither 'context' nor 'connection_id'",
                     "set context: <kubeconfig context> (optionally kubeconfig: <path>) or "
                     "connection_id: <Airflow connection of type kubernetes>")
    if context is not None:
        r.text(context, f"{key}.context")
    if connection_id is not None:
        r.text(connection_id, f"{key}.connection_id")
    kubeconfig = raw.get("kubeconfig", defaults.get("kubeconfig"))
    if kubeconfig is not None:
        r.text(kubeconfig, f"{key}.kubeconfig")
    return context, kubeconfig, connection_id


def _products(r: _Reader, key: str, raw: Any) -> dict[str, str]:
    """GPU alias (T4) -> node label value (Tesla-T4), both checked."""
    products = r.mapping(raw if raw is not None else {}, f"{key}.gpu_products")
    if not products:
        raise r.fail(f"{key}.gpu_products", "no GPU products",
                     "map each GPU alias to its node label value, e.g. {T4: Tesla-T4}")
    for alias, value in products.items():
        r.text(alias, f"{key}.gpu_products")
        if not _ALIAS.fullmatch(alias):
            raise r.fail(f"{key}.gpu_products.{alias}", f"{alias!r} is not usable as gpus='{alias}:N'",
                         "name the GPU with letters, digits, '_', '.' and '-' (e.g. T4, A100-80GB)")
        r.text(value, f"{key}.gpu_products.{alias}")
        if len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
            raise r.fail(f"{key}.gpu_products.{alias}", f"{value!r} is not a valid node label value",
                         "use the node's label value as is, e.g. Tesla-T4 (at most 63 letters, "
                         "digits, '-', '_', '.')")
    return {str(a): str(v) for a, v in products.items()}


def _tiers(r: _Reader, key: str, raw: Any, defaults: Any) -> dict[str, Tier]:
    defaults = r.mapping(defaults, "defaults.tiers")
    raw = r.mapping(raw or {}, f"{key}.tiers")
    for k in list(raw) + list(defaults):
        if k not in TIER_NAMES:
            where = f"{key}.tiers.{k}" if k in raw else f"defaults.tiers.{k}"
            raise r.fail(where, "unknown tier", _choices(str(k), TIER_NAMES, "tier"))
    tiers = {}
    for name in TIER_NAMES:
        merged = {**r.mapping(defaults.get(name) or {}, f"defaults.tiers.{name}"),
                  **r.mapping(raw.get(name) or {}, f"{key}.tiers.{name}")}
        r.keys(merged, _TIER_KEYS, f"{key}.tiers.{name}")
        values = {}
        for field_name in sorted(_TIER_KEYS):
            if field_name not in merged:
                raise r.fail(f"{key}.tiers.{name}.{field_name}", "missing",
                             f"set the {field_name.replace('_', ' ')} for the {name} tier")
            values[field_name] = r.text(merged[field_name], f"{key}.tiers.{name}.{field_name}",
                                        dns=True)
        tiers[name] = Tier(name=name, **values)
    return tiers
