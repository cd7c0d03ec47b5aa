"""Fuzzing the fleet loader: whatever people write, it answers with a Fleet or a FleetError.

Anything else (KeyError, TypeError, AttributeError, OverflowError, ...) would reach the DAG
author as a stack trace instead of "file, key, fix".
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_skyshare.fleet import Fleet, FleetError, parse
from airflow_provider_skyshare.fleetfile import load

# No example database: the suite must not leave a .hypothesis/ folder in the work tree.
FAST = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
MANY = settings(FAST, max_examples=300)
FEW = settings(FAST, max_examples=100)

VALID: dict[str, Any] = {
    "version": 1,
    "defaults": {"namespace": "skyshare", "gpu_label": "nvidia.com/gpu.product",
                 "gpu_products": {"T4": "Tesla-T4"}},
    "policy": {"borrow_cooldown_seconds": 300, "pin_owned_after_preemptions": 2,
               "probe_timeout_seconds": 3},
    "orgs": [{"name": "rise", "members": ["romil"]}, {"name": "bair", "members": ["abbeel", "*"]}],
    "clusters": [
        {"name": "rise", "owner": "rise", "context": "rise-operator", "cost_per_gpu_hour": 0.35,
         "tiers": {"owner": {"local_queue": "skyshare-owner", "priority_class": "high-priority",
                             "workload_priority_class": "high-priority"}}},
        {"name": "bair", "owner": "bair", "connection_id": "k8s_bair", "kubeconfig": "/k",
         "lend": False, "gpu_products": {"T4": "Tesla-T4", "A100": "NVIDIA-A100"}},
    ],
}

KEYS = ["version", "defaults", "policy", "orgs", "clusters", "name", "members", "owner",
        "context", "connection_id", "kubeconfig", "namespace", "gpu_label", "gpu_products",
        "tiers", "owner", "borrower", "local_queue", "priority_class", "workload_priority_class",
        "cost_per_gpu_hour", "lend", "borrow_cooldown_seconds", "pin_owned_after_preemptions",
        "probe_timeout_seconds", "T4", "rise", "bair", "*"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(10**500), max_value=10**500),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(KEYS), st.sampled_from(["", " ", "rise\n", "-x-", "A", "a" * 70, "1"]),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=8), st.integers(-3, 3), st.booleans())
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(keys, inner, max_size=4)),
    max_leaves=20,
)


def check(data: Any) -> Fleet | None:
    try:
        fleet = parse(data, source="fuzz.yaml")
    except FleetError as exc:
        assert exc.source == "fuzz.yaml"
        assert exc.key and exc.problem and exc.fix
        assert str(exc).startswith("fuzz.yaml: ")
        return None
    assert isinstance(fleet, Fleet)
    # Whatever was accepted is usable: round trip, finite numbers, products known.
    assert parse(fleet.to_dict(), source="fuzz.yaml") == fleet
    for c in fleet.clusters.values():
        assert c.owner in fleet.orgs
        assert c.gpu_products
        assert c.cost_per_gpu_hour is None or math.isfinite(c.cost_per_gpu_hour)
        assert c.context is not None or c.connection_id is not None
    assert math.isfinite(fleet.policy.borrow_cooldown_seconds)
    return fleet


def test_the_valid_fleet_is_valid() -> None:
    fleet = check(copy.deepcopy(VALID))
    assert fleet is not None and set(fleet.clusters) == {"rise", "bair"}


@FAST
@given(values)
def test_random_structures(data: Any) -> None:
    check(data)


@FAST
@given(st.dictionaries(st.sampled_from(["version", "defaults", "policy", "orgs", "clusters"]),
                       values, max_size=5))
def test_random_top_level_sections(data: dict[str, Any]) -> None:
    check(data)


# A path into the valid fleet and what to put there (or delete).
def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


PATHS = _paths(VALID)


def _apply(data: dict[str, Any], path: tuple[Any, ...], op: str, value: Any) -> None:
    parent: Any = data
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if op == "delete":
        if isinstance(parent, dict):
            parent.pop(last, None)
        else:
            del parent[last]
    elif op == "set":
        parent[last] = value
    elif op == "add-key" and isinstance(parent, dict):
        parent[value if isinstance(value, str) else str(value)] = value
    elif op == "duplicate" and isinstance(parent, list):
        parent.append(copy.deepcopy(parent[last]))


mutations = st.lists(
    st.tuples(st.sampled_from(PATHS), st.sampled_from(["delete", "set", "set", "add-key", "duplicate"]),
              values),
    min_size=1, max_size=4,
)


@MANY
@given(mutations)
def test_mutations_of_a_valid_fleet(changes: list[tuple[tuple[Any, ...], str, Any]]) -> None:
    data = copy.deepcopy(VALID)
    for path, op, value in changes:
        try:
            _apply(data, path, op, value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change removed the path
    check(data)


@FAST
@given(st.text(max_size=200))
def test_random_text_files(tmp_path_factory: Any, text: str) -> None:
    path = Path(tmp_path_factory.mktemp("fuzz")) / "fleet.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))  # lone surrogates: not UTF-8
    _load_checked(path)


@FAST
@given(st.binary(max_size=120))
def test_random_bytes_files(tmp_path_factory: Any, blob: bytes) -> None:
    path = Path(tmp_path_factory.mktemp("fuzz")) / "fleet.yaml"
    path.write_bytes(blob)
    _load_checked(path)


yaml_ish = st.lists(
    st.sampled_from(["version: 1", "orgs:", "clusters:", "  - name: rise", "    members: [romil]",
                     "    owner: rise", "    context: c", "defaults: {gpu_products: {T4: Tesla-T4}}",
                     "  - {name: bair, owner: bair, context: b}", "policy: {probe_timeout_seconds: 0}",
                     "- ", ": ", "  ", "\t", "[", "]", "{", "}", "&a x", "*a", "!!binary AAAA",
                     "? [a, b]", "---", "...", "'", '"', "#", "key: &x [*x]", "%YAML 1.1",
                     "name: .nan", "cost_per_gpu_hour: .inf", "2001-12-14", "<<: {a: 1}"]),
    max_size=14,
).map("\n".join)


@MANY
@given(yaml_ish)
def test_yaml_ish_text(tmp_path_factory: Any, text: str) -> None:
    path = Path(tmp_path_factory.mktemp("fuzz")) / "fleet.yaml"
    path.write_text(text)
    _load_checked(path)


@FEW
@given(mutations)
def test_mutated_fleet_through_a_yaml_file(tmp_path_factory: Any,
                                           changes: list[tuple[tuple[Any, ...], str, Any]]) -> None:
    data = copy.deepcopy(VALID)
    for path, op, value in changes:
        try:
            _apply(data, path, op, value)
        except (KeyError, IndexError, TypeError):
            continue
    try:
        text = yaml.safe_dump(data)
    except yaml.YAMLError:
        return
    path = Path(tmp_path_factory.mktemp("fuzz")) / "fleet.yaml"
    path.write_text(text)
    _load_checked(path)


def _load_checked(path: Path) -> None:
    try:
        fleet = load(path)
    except FleetError as exc:
        assert exc.source == str(path)
        assert exc.key and exc.problem and exc.fix
        return
    assert isinstance(fleet, Fleet)
    assert parse(fleet.to_dict(), source=str(path)) == fleet
