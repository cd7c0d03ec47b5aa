"""The fleet loader: every bad fleet is refused with the file, the key at fault and a fix."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from airflow_provider_skyshare.fleet import (
    BORROWER,
    DEFAULT_TIERS,
    OWNER,
    Access,
    Fleet,
    FleetError,
    Identity,
    Org,
    Policy,
    parse,
)
from airflow_provider_skyshare.fleetfile import load

ROOT = Path(__file__).resolve().parents[2]
SOURCE = "fleets/bad.yaml"


def seed() -> dict[str, Any]:
    return {
        "version": 1,
        "defaults": {"gpu_products": {"T4": "Tesla-T4"}},
        "orgs": [{"name": "rise", "members": ["romil"]}, {"name": "bair", "members": ["abbeel"]}],
        "clusters": [
            {"name": "rise", "owner": "rise", "context": "rise-operator", "cost_per_gpu_hour": 0.35},
            {"name": "bair", "owner": "bair", "context": "bair-operator", "cost_per_gpu_hour": 0.35},
        ],
    }


def mutate(fn: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    d = seed()
    fn(d)
    return d


def c0(d: dict[str, Any]) -> dict[str, Any]:
    return d["clusters"][0]


# (id, fleet dict, key, words in the problem, words in the fix)
BAD: list[tuple[str, Any, str, str, str]] = [
    ("top-level-list", [seed()], "(top level)", "expected a mapping", "'name: value' pairs"),
    ("top-level-scalar", "rise", "(top level)", "got str", "'name: value' pairs"),
    ("unknown-top-key", mutate(lambda d: d.update(cluster=[])), "cluster", "unknown key",
     "did you mean 'clusters'"),
    ("version-2", mutate(lambda d: d.update(version=2)), "version", "unsupported version 2",
     "set version: 1"),
    ("orgs-missing", mutate(lambda d: d.pop("orgs")), "orgs", "missing or not a list",
     "at least one '- name: ...'"),
    ("orgs-empty", mutate(lambda d: d.update(orgs=[])), "orgs", "missing or not a list",
     "at least one '- name: ...'"),
    ("orgs-mapping", mutate(lambda d: d.update(orgs={"rise": ["romil"]})), "orgs",
     "not a list", "'- name: ...'"),
    ("org-not-mapping", mutate(lambda d: d["orgs"].__setitem__(0, "rise")), "orgs[0]",
     "expected a mapping", "'name: value'"),
    ("org-without-name", mutate(lambda d: d["orgs"][0].pop("name")), "orgs[0].name",
     "non-empty string", "set orgs[0].name"),
    ("org-name-upper", mutate(lambda d: d["orgs"][0].update(name="RISE")), "orgs[0].name",
     "not a valid Kubernetes name", "lower-case"),
    ("org-name-too-long", mutate(lambda d: d["orgs"][0].update(name="r" * 64)), "orgs[0].name",
     "not a valid Kubernetes name", "at most 63"),
    ("org-name-trailing-newline", mutate(lambda d: d["orgs"][0].update(name="rise\n")),
     "orgs[0].name", "not a valid Kubernetes name", "lower-case"),
    ("duplicate-org", mutate(lambda d: d["orgs"][1].update(name="rise")), "orgs[1].name",
     "duplicate org 'rise'", "unique name"),
    ("org-unknown-key", mutate(lambda d: d["orgs"][0].update(member=["x"])), "orgs[0].member",
     "unknown key", "did you mean 'members'"),
    ("members-string", mutate(lambda d: d["orgs"][0].update(members="romil")), "orgs[0].members",
     "not a list of names", "['*'] for anyone"),
    ("members-number", mutate(lambda d: d["orgs"][0].update(members=["romil", 7])),
     "orgs[0].members", "not a list of names", "list the Airflow users"),
    ("members-empty-name", mutate(lambda d: d["orgs"][0].update(members=[""])), "orgs[0].members",
     "not a list of names", "list the Airflow users"),
    ("bundles-string", mutate(lambda d: d["orgs"][0].update(bundles="rise")), "orgs[0].bundles",
     "not a list of names", "DAG bundles"),
    ("bundle-two-orgs", mutate(lambda d: (d["orgs"][0].update(bundles=["shared"]),
                                          d["orgs"][1].update(bundles=["x", "shared"]))),
     "orgs[1].bundles", "bundle 'shared' is mapped to org 'rise' too", "one org only"),
    ("identity-unknown", mutate(lambda d: d.update(policy={"identity": "dag"})), "policy.identity",
     "unknown identity 'dag'", "'airflow'"),
    ("access-both", mutate(lambda d: d["clusters"][0].update(
        access={"context": "{org}@x", "connection_id": "c_{org}"})), "clusters[0].access",
     "exactly one of", "connection_id: 'skyshare_{org}_{cluster}'"),
    ("access-neither", mutate(lambda d: d["clusters"][0].update(access={"kubeconfig": "/k"})),
     "clusters[0].access", "exactly one of", "context: '{org}@{cluster}'"),
    ("access-unknown-key", mutate(lambda d: d["clusters"][0].update(access={"ctx": "a"})),
     "clusters[0].access.ctx", "unknown key", "did you mean 'context'"),
    ("access-bad-placeholder", mutate(lambda d: d["clusters"][0].update(
        access={"context": "{team}@{cluster}"})), "clusters[0].access.context",
     "not a template over {org} and {cluster}", "only the placeholders"),
    ("namespace-shared-when-enforced", mutate(lambda d: d["clusters"][0].update(
        namespace="skyshare", access={"context": "{org}@{cluster}"})), "clusters[0].namespace",
     "would be shared by every org", "skyshare-{org}"),
    ("namespace-template-invalid-name", mutate(lambda d: d["clusters"][0].update(
        namespace="Sky_{org}")), "clusters[0].namespace", "not a valid Kubernetes name",
     "lower-case"),
    ("view-unknown", mutate(lambda d: d.update(view="mit")), "view", "unknown org 'mit'",
     "use one of the orgs"),
    ("namespace-reserved", mutate(lambda d: d["orgs"].append({"name": "system"})),
     "clusters[0].namespace", "org 'system' would get namespace 'skyshare-system'",
     "rename the org"),
    ("namespace-kube-system", mutate(lambda d: (d["orgs"].append({"name": "system"}),
                                                d["clusters"][0].update(namespace="kube-{org}"))),
     "clusters[0].namespace", "would get namespace 'kube-system'", "avoids it"),
    ("clusters-missing", mutate(lambda d: d.pop("clusters")), "clusters", "missing or not a list",
     "'clusters:'"),
    ("clusters-empty", mutate(lambda d: d.update(clusters=[])), "clusters",
     "missing or not a list", "'clusters:'"),
    ("cluster-not-mapping", mutate(lambda d: d["clusters"].append(["rise"])), "clusters[2]",
     "expected a mapping, got list", "'name: value'"),
    ("cluster-unknown-key", mutate(lambda d: c0(d).update(contxt="x")), "clusters[0].contxt",
     "unknown key", "did you mean 'context'"),
    ("cluster-without-name", mutate(lambda d: c0(d).pop("name")), "clusters[0].name",
     "non-empty string", "set clusters[0].name"),
    ("cluster-name-underscore", mutate(lambda d: c0(d).update(name="rise_1")), "clusters[0].name",
     "not a valid Kubernetes name", "lower-case letters, digits and '-'"),
    ("unknown-owner", mutate(lambda d: c0(d).update(owner="berkeley")), "clusters[0].owner",
     "unknown org 'berkeley'", "use one of the orgs: bair, rise"),
    ("owner-typo", mutate(lambda d: c0(d).update(owner="rsie")), "clusters[0].owner",
     "unknown org 'rsie'", "did you mean 'rise'"),
    ("owner-missing", mutate(lambda d: c0(d).pop("owner")), "clusters[0].owner",
     "non-empty string", "set clusters[0].owner"),
    ("duplicate-cluster", mutate(lambda d: d["clusters"][1].update(name="rise")),
     "clusters[1].name", "duplicate cluster 'rise'", "unique name"),
    ("no-context-no-connection", mutate(lambda d: c0(d).pop("context")), "clusters[0]",
     "neither 'context' nor 'connection_id'", "connection_id: <Airflow connection"),
    ("context-empty", mutate(lambda d: c0(d).update(context="")), "clusters[0].context",
     "non-empty string", "set clusters[0].context"),
    ("context-number", mutate(lambda d: c0(d).update(context=3)), "clusters[0].context",
     "got 3", "set clusters[0].context"),
    ("connection-id-blank", mutate(lambda d: c0(d).update(connection_id="  ")),
     "clusters[0].connection_id", "non-empty string", "set clusters[0].connection_id"),
    ("kubeconfig-empty", mutate(lambda d: c0(d).update(kubeconfig="")), "clusters[0].kubeconfig",
     "non-empty string", "set clusters[0].kubeconfig"),
    ("namespace-bad", mutate(lambda d: c0(d).update(namespace="Sky_Share")),
     "clusters[0].namespace", "not a valid Kubernetes name", "lower-case"),
    ("namespace-too-long", mutate(lambda d: c0(d).update(namespace="n" * 64)),
     "clusters[0].namespace", "not a valid Kubernetes name", "at most 63"),
    ("gpu-label-bad", mutate(lambda d: c0(d).update(gpu_label="nvidia.com/gpu product")),
     "clusters[0].gpu_label", "not a valid label key", "nvidia.com/gpu.product"),
    ("gpu-products-empty", mutate(lambda d: c0(d).update(gpu_products={})),
     "clusters[0].gpu_products", "no GPU products", "{T4: Tesla-T4}"),
    ("gpu-products-list", mutate(lambda d: c0(d).update(gpu_products=["T4"])),
     "clusters[0].gpu_products", "expected a mapping, got list", "'name: value' pairs"),
    ("gpu-products-null", mutate(lambda d: (d.pop("defaults"), c0(d).update(gpu_products=None))),
     "clusters[0].gpu_products", "no GPU products", "{T4: Tesla-T4}"),
    ("gpu-products-missing", mutate(lambda d: (d.pop("defaults"), c0(d).pop("gpu_products", None))),
     "clusters[0].gpu_products", "no GPU products", "{T4: Tesla-T4}"),
    ("gpu-product-value-number", mutate(lambda d: c0(d).update(gpu_products={"T4": 4})),
     "clusters[0].gpu_products.T4", "got 4", "set clusters[0].gpu_products.T4"),
    ("gpu-product-value-space", mutate(lambda d: c0(d).update(gpu_products={"T4": "Tesla T4"})),
     "clusters[0].gpu_products.T4", "not a valid node label value", "Tesla-T4"),
    ("gpu-product-value-too-long", mutate(lambda d: c0(d).update(gpu_products={"T4": "T" * 64})),
     "clusters[0].gpu_products.T4", "not a valid node label value", "at most 63"),
    ("gpu-product-alias-number", mutate(lambda d: c0(d).update(gpu_products={4: "Tesla-T4"})),
     "clusters[0].gpu_products", "got 4", "set clusters[0].gpu_products"),
    ("gpu-product-alias-colon", mutate(lambda d: c0(d).update(gpu_products={"T4:2": "Tesla-T4"})),
     "clusters[0].gpu_products.T4:2", "not usable as gpus='T4:2:N'", "A100-80GB"),
    ("unknown-tier", mutate(lambda d: c0(d).update(tiers={"owners": {"local_queue": "q"}})),
     "clusters[0].tiers.owners", "unknown tier", "did you mean 'owner'"),
    ("unknown-default-tier", mutate(lambda d: d["defaults"].update(
        tiers={**DEFAULT_TIERS, "lender": {}})), "defaults.tiers.lender", "unknown tier",
     "use one of the tiers: borrower, owner"),
    ("tier-unknown-field", mutate(lambda d: c0(d).update(tiers={"owner": {"queue": "q"}})),
     "clusters[0].tiers.owner.queue", "unknown key", "did you mean 'local_queue'"),
    ("tier-field-missing", mutate(lambda d: d["defaults"].update(
        tiers={OWNER: DEFAULT_TIERS[OWNER]})), "clusters[0].tiers.borrower.local_queue",
     "missing", "set the local queue for the borrower tier"),
    ("tier-priority-class-bad", mutate(lambda d: c0(d).update(
        tiers={"owner": {"priority_class": "High_Priority"}})),
     "clusters[0].tiers.owner.priority_class", "not a valid Kubernetes name", "lower-case"),
    ("tier-not-mapping", mutate(lambda d: c0(d).update(tiers={"borrower": "low"})),
     "clusters[0].tiers.borrower", "expected a mapping, got str", "'name: value' pairs"),
    ("tiers-list", mutate(lambda d: c0(d).update(tiers=["owner"])), "clusters[0].tiers",
     "expected a mapping, got list", "'name: value' pairs"),
    ("negative-cost", mutate(lambda d: c0(d).update(cost_per_gpu_hour=-0.35)),
     "clusters[0].cost_per_gpu_hour", "expected a number >= 0, got -0.35", "at least 0"),
    ("cost-string", mutate(lambda d: c0(d).update(cost_per_gpu_hour="cheap")),
     "clusters[0].cost_per_gpu_hour", "got 'cheap'", "a number of at least 0"),
    ("cost-nan", mutate(lambda d: c0(d).update(cost_per_gpu_hour=float("nan"))),
     "clusters[0].cost_per_gpu_hour", "got nan", "a number of at least 0"),
    ("cost-inf", mutate(lambda d: c0(d).update(cost_per_gpu_hour=float("inf"))),
     "clusters[0].cost_per_gpu_hour", "got inf", "a number of at least 0"),
    ("cost-bool", mutate(lambda d: c0(d).update(cost_per_gpu_hour=True)),
     "clusters[0].cost_per_gpu_hour", "got True", "a number of at least 0"),
    ("lend-string", mutate(lambda d: c0(d).update(lend="yes")), "clusters[0].lend",
     "expected true or false, got 'yes'", "false to forbid it"),
    ("defaults-unknown-key", mutate(lambda d: d["defaults"].update(namespaces="x")),
     "defaults.namespaces", "unknown key", "did you mean 'namespace'"),
    ("defaults-list", mutate(lambda d: d.update(defaults=["namespace"])), "defaults",
     "expected a mapping", "'name: value' pairs"),
    ("policy-unknown-key", mutate(lambda d: d.update(policy={"borrow_cooldown": 5})),
     "policy.borrow_cooldown", "unknown key", "did you mean 'borrow_cooldown_seconds'"),
    ("policy-list", mutate(lambda d: d.update(policy=[1])), "policy", "expected a mapping",
     "'name: value' pairs"),
    ("cooldown-negative", mutate(lambda d: d.update(policy={"borrow_cooldown_seconds": -1})),
     "policy.borrow_cooldown_seconds", ">= 0, got -1", "at least 0"),
    ("cooldown-huge-int", mutate(lambda d: d.update(policy={"borrow_cooldown_seconds": 10**400})),
     "policy.borrow_cooldown_seconds", "expected a number", "at least 0"),
    ("pin-fraction", mutate(lambda d: d.update(policy={"pin_owned_after_preemptions": 1.5})),
     "policy.pin_owned_after_preemptions", "a whole number >= 0, got 1.5", "a whole number"),
    ("pin-negative", mutate(lambda d: d.update(policy={"pin_owned_after_preemptions": -2})),
     "policy.pin_owned_after_preemptions", "got -2", "a whole number of at least 0"),
    ("probe-timeout-zero", mutate(lambda d: d.update(policy={"probe_timeout_seconds": 0})),
     "policy.probe_timeout_seconds", ">= 0.1, got 0", "at least 0.1"),
]


@pytest.mark.parametrize(("data", "key", "problem", "fix"), [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])
def test_bad_fleet_names_file_key_and_fix(data: Any, key: str, problem: str, fix: str) -> None:
    with pytest.raises(FleetError) as info:
        parse(copy.deepcopy(data), source=SOURCE)
    err = info.value
    assert err.source == SOURCE
    assert err.key == key
    assert problem in err.problem
    assert fix in err.fix
    # The message people read carries all three, in this order.
    text = str(err)
    assert text.startswith(f"{SOURCE}: {key}: ")
    assert f"Fix: {err.fix}" in text
    assert isinstance(err, ValueError)


def test_bad_fleet_table_is_large_and_distinct() -> None:
    assert len(BAD) >= 20
    assert len({b[0] for b in BAD}) == len(BAD)
    assert len({(b[2], b[3]) for b in BAD}) >= 40  # distinct (key, problem) pairs


def test_empty_fleet_is_refused() -> None:
    with pytest.raises(FleetError) as info:
        parse(None, source=SOURCE)
    assert (info.value.key, info.value.problem) == ("(file)", "the fleet is empty")
    assert "'orgs:'" in info.value.fix


# -- files -----------------------------------------------------------------------------------


def write(tmp_path: Path, text: str | bytes, name: str = "fleet.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_yaml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 1\norgs:\n  - name: rise\n    members: [romil\nclusters: []\n")
    with pytest.raises(FleetError) as info:
        load(path)
    err = info.value
    assert err.source == str(path)
    assert err.key.startswith("line ") and ", column " in err.key
    line = int(err.key.split()[1].rstrip(","))
    assert 4 <= line <= 5  # the unclosed flow sequence starts on line 4
    assert err.problem.startswith("YAML syntax error")
    assert err.fix == "correct the YAML at that position"


def test_yaml_tab_indentation_is_a_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path, "orgs:\n\t- name: rise\n")
    with pytest.raises(FleetError) as info:
        load(path)
    assert info.value.key == "line 2, column 1"
    assert "YAML syntax error" in info.value.problem


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(FleetError) as info:
        load(path)
    assert (info.value.source, info.value.key, info.value.problem) == (str(path), "(file)",
                                                                       "file not found")
    assert "AIRFLOW__SKYSHARE__FLEET_FILE" in info.value.fix


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(FleetError) as info:
        load(tmp_path)
    assert info.value.key == "(file)"
    assert "cannot be read" in info.value.problem
    assert "permissions" in info.value.fix


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = write(tmp_path, b"orgs:\n  - name: r\xe9seau\n")
    with pytest.raises(FleetError) as info:
        load(path)
    assert info.value.key == "(file)"
    assert "not UTF-8" in info.value.problem
    assert "UTF-8" in info.value.fix


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(FleetError) as info:
        load(write(tmp_path, "# nothing here yet\n"))
    assert info.value.problem == "the fleet is empty"


def test_error_in_file_names_the_file(tmp_path: Path) -> None:
    d = seed()
    d["clusters"][1]["owner"] = "biar"
    path = write(tmp_path, yaml.safe_dump(d))
    with pytest.raises(FleetError) as info:
        load(str(path))
    assert info.value.source == str(path)
    assert info.value.key == "clusters[1].owner"
    assert "did you mean 'bair'" in info.value.fix


# -- what is accepted ------------------------------------------------------------------------


def test_seed_fleet_values() -> None:
    fleet = parse(seed(), source="x.yaml")
    assert fleet.source == "x.yaml"
    assert list(fleet.orgs) == ["rise", "bair"]
    assert list(fleet.clusters) == ["rise", "bair"]
    rise = fleet.clusters["rise"]
    assert (rise.owner, rise.namespace, rise.context) == ("rise", "skyshare-{org}", "rise-operator")
    assert rise.namespace_of("bair") == "skyshare-bair" and not rise.enforced
    assert rise.gpu_label == "nvidia.com/gpu.product"
    assert dict(rise.gpu_products) == {"T4": "Tesla-T4"}
    assert rise.cost_per_gpu_hour == 0.35
    assert rise.lend is True
    assert rise.connection_id is None and rise.kubeconfig is None
    assert rise.tier(OWNER).local_queue == "skyshare-owner"
    assert rise.tier(OWNER).priority_class == "high-priority"
    assert rise.tier(BORROWER).local_queue == "skyshare-borrower"
    assert rise.tier(BORROWER).workload_priority_class == "low-priority"
    assert fleet.policy == Policy()
    assert fleet.owned_by("rise") == [rise]
    assert fleet.owned_by("nobody") == []
    assert fleet.products() == {"T4"}


def test_cluster_overrides_defaults_and_tiers_merge() -> None:
    d = seed()
    d["defaults"].update(namespace="gpu-jobs", kubeconfig="/etc/kube/config", lend=False)
    c0(d).update(namespace="rise-jobs", gpu_products={"A100": "NVIDIA-A100-SXM4-80GB"},
                 tiers={"borrower": {"local_queue": "guests"}}, connection_id="k8s_rise")
    fleet = parse(d)
    rise, bair = fleet.clusters["rise"], fleet.clusters["bair"]
    assert rise.namespace == "rise-jobs" and bair.namespace == "gpu-jobs"
    assert rise.kubeconfig == bair.kubeconfig == "/etc/kube/config"
    assert rise.lend is False and bair.lend is False
    assert dict(rise.gpu_products) == {"A100": "NVIDIA-A100-SXM4-80GB"}
    assert dict(bair.gpu_products) == {"T4": "Tesla-T4"}
    assert rise.connection_id == "k8s_rise"
    # only the overridden field changes; the rest of the tier comes from the defaults
    assert rise.tier(BORROWER).local_queue == "guests"
    assert rise.tier(BORROWER).priority_class == "low-priority"
    assert bair.tier(BORROWER).local_queue == "skyshare-borrower"
    assert fleet.products() == {"A100", "T4"}


def test_connection_id_alone_is_enough() -> None:
    d = seed()
    c0(d).pop("context")
    c0(d)["connection_id"] = "kubernetes_rise"
    assert parse(d).clusters["rise"].connection_id == "kubernetes_rise"


def test_member_of_two_orgs_is_allowed() -> None:
    """A person may work for two orgs; the org argument of the task says which one counts."""
    d = seed()
    d["orgs"][1]["members"].append("romil")
    fleet = parse(d)
    assert fleet.org("rise").admits("romil") and fleet.org("bair").admits("romil")


def test_org_membership() -> None:
    anyone = Org("open", frozenset({"*"}))
    assert anyone.admits("whoever") and anyone.admits(None)
    closed = Org("closed", frozenset({"romil"}))
    assert closed.admits("romil")
    assert not closed.admits("abbeel") and not closed.admits(None)
    assert not Org("empty", frozenset()).admits("romil")


def test_unknown_org_lookup_suggests() -> None:
    fleet = parse(seed(), source="f.yaml")
    with pytest.raises(FleetError) as info:
        fleet.org("bari")
    assert (info.value.source, info.value.key) == ("f.yaml", "orgs")
    assert "did you mean 'bair'" in info.value.fix


def test_policy_values_and_types() -> None:
    d = seed()
    d["policy"] = {"borrow_cooldown_seconds": 0, "pin_owned_after_preemptions": 0,
                   "probe_timeout_seconds": 1}
    p = parse(d).policy
    assert p == Policy(0.0, 0, 1.0)
    assert isinstance(p.borrow_cooldown_seconds, float) and isinstance(p.probe_timeout_seconds, float)


def test_cost_is_optional_and_a_float() -> None:
    d = seed()
    c0(d).pop("cost_per_gpu_hour")
    d["clusters"][1]["cost_per_gpu_hour"] = 2
    fleet = parse(d)
    assert fleet.clusters["rise"].cost_per_gpu_hour is None
    assert fleet.clusters["bair"].cost_per_gpu_hour == 2.0
    assert isinstance(fleet.clusters["bair"].cost_per_gpu_hour, float)


def test_parse_does_not_modify_its_input() -> None:
    d = seed()
    before = copy.deepcopy(d)
    parse(d)
    assert d == before


# -- round trip ------------------------------------------------------------------------------


def rich() -> dict[str, Any]:
    d = seed()
    d["policy"] = {"borrow_cooldown_seconds": 12.5, "pin_owned_after_preemptions": 4,
                   "probe_timeout_seconds": 0.5}
    d["orgs"].append({"name": "public", "members": ["*"]})
    d["clusters"].append({
        "name": "cloud", "owner": "public", "connection_id": "k8s_cloud", "kubeconfig": "/k",
        "namespace": "cloud-ns", "gpu_label": "cloud.example.com/accelerator",
        "gpu_products": {"A100": "a100-80gb", "T4": "t4"}, "lend": False,
        "tiers": {"owner": {"local_queue": "mine", "priority_class": "p-hi",
                            "workload_priority_class": "wp-hi"}},
    })
    return d


@pytest.mark.parametrize("build", [seed, rich], ids=["seed", "rich"])
def test_round_trip(build: Callable[[], dict[str, Any]]) -> None:
    fleet = parse(build(), source="a.yaml")
    as_dict = fleet.to_dict()
    again = parse(json.loads(json.dumps(as_dict)), source="a.yaml")  # as trigger kwargs travel
    assert again == fleet
    assert again.to_dict() == as_dict


def test_round_trip_keeps_every_field() -> None:
    fleet = parse(rich())
    d = fleet.to_dict()
    cloud = next(c for c in d["clusters"] if c["name"] == "cloud")
    assert cloud["connection_id"] == "k8s_cloud" and cloud["kubeconfig"] == "/k"
    assert "context" not in cloud and "cost_per_gpu_hour" not in cloud
    assert cloud["lend"] is False
    assert cloud["tiers"]["owner"]["workload_priority_class"] == "wp-hi"
    assert cloud["tiers"]["borrower"]["local_queue"] == "skyshare-borrower"
    assert {"name": "public", "members": ["*"], "bundles": []} in d["orgs"]
    assert d["policy"]["pin_owned_after_preemptions"] == 4
    assert d["version"] == 1


def test_round_trip_through_yaml_file(tmp_path: Path) -> None:
    fleet = parse(rich(), source=str(tmp_path / "f.yaml"))
    (tmp_path / "f.yaml").write_text(yaml.safe_dump(fleet.to_dict()))
    assert load(tmp_path / "f.yaml") == fleet


def test_different_fleets_are_not_equal() -> None:
    a = parse(seed())
    d = seed()
    d["clusters"][1]["cost_per_gpu_hour"] = 0.36
    assert parse(d) != a


# -- the example fleets ----------------------------------------------------------------------


def test_example_seed_fleet_loads() -> None:
    fleet = load(ROOT / "dags" / "fleet.yaml")
    assert isinstance(fleet, Fleet)
    assert set(fleet.orgs) == {"rise", "bair"}
    assert fleet.org("rise").members == frozenset({"romil"})
    assert fleet.org("bair").members == frozenset({"abbeel"})
    assert {c.name: c.owner for c in fleet.clusters.values()} == {"rise": "rise", "bair": "bair"}
    assert fleet.clusters["rise"].context == "rise-operator"
    assert fleet.policy == Policy(300.0, 2, 3.0)
    for c in fleet.clusters.values():
        assert dict(c.gpu_products) == {"T4": "Tesla-T4"}
        assert c.tier(OWNER).priority_class == "high-priority"
        assert c.tier(BORROWER).priority_class == "low-priority"
    assert parse(fleet.to_dict(), source=fleet.source) == fleet


def test_example_teams_fleet_loads() -> None:
    fleet = load(ROOT / "dags" / "fleet-teams.yaml")
    assert set(fleet.orgs) == {"team-a", "team-b"}
    assert list(fleet.clusters) == ["campus"]
    campus = fleet.clusters["campus"]
    assert campus.owner == "team-a" and campus.context == "campus-operator"
    assert campus.tier(OWNER).local_queue == "skyshare-owner"
    assert campus.tier(BORROWER).local_queue == "skyshare-borrower"
    assert fleet.policy.probe_timeout_seconds == 3.0
    assert fleet.policy.borrow_cooldown_seconds == Policy().borrow_cooldown_seconds
    assert fleet.owned_by("team-b") == []
    assert parse(fleet.to_dict(), source=fleet.source) == fleet


# -- each org's view: namespace and credential resolved ---------------------------------------


def enforced() -> dict[str, Any]:
    d = seed()
    d["defaults"]["access"] = {"context": "{org}@{cluster}"}
    d["orgs"][0]["bundles"] = ["rise-dags"]
    return d


def test_an_org_view_resolves_namespace_and_credential_and_keeps_the_reader() -> None:
    fleet = parse(enforced(), source="f.yaml")
    view = fleet.for_org("rise")
    bair = view.clusters["bair"]
    assert (bair.namespace, bair.context, bair.org) == ("skyshare-rise", "rise@bair", "rise")
    assert bair.enforced and bair.reader == Access(context="bair-operator")
    reader = bair.as_reader()
    assert (reader.context, reader.reader) == ("bair-operator", None)
    assert view.for_org("bair").clusters["bair"].context == "bair@bair"  # from the base
    assert fleet.org_of_bundle("rise-dags").name == "rise" and fleet.org_of_bundle("x") is None


def test_an_org_view_travels_as_trigger_kwargs() -> None:
    view = parse(enforced()).for_org("bair")
    again = parse(json.loads(json.dumps(view.to_dict())))
    assert again == view and again.view == "bair"
    assert again.clusters["rise"].context == "bair@rise"


def test_without_access_every_org_uses_the_cluster_credential_in_its_own_namespace() -> None:
    view = parse(seed()).for_org("rise")
    rise = view.clusters["rise"]
    assert (rise.namespace, rise.context, rise.reader, rise.enforced) == (
        "skyshare-rise", "rise-operator", None, False)
    assert rise.as_reader() is rise


def test_tier_for_follows_ownership_and_lending() -> None:
    d = enforced()
    d["clusters"][1]["lend"] = False
    fleet = parse(d)
    assert fleet.clusters["rise"].tier_for("rise").name == "owner"
    assert fleet.clusters["rise"].tier_for("bair").name == "borrower"
    assert fleet.clusters["bair"].tier_for("rise") is None
    assert list(fleet.for_org("rise").clusters) == ["rise"]  # no credential where not lent
    assert list(fleet.for_org("bair").clusters) == ["rise", "bair"]


def test_identity_policy_parses() -> None:
    d = seed()
    d["policy"] = {"identity": "owner"}
    assert parse(d).policy.identity is Identity.OWNER
    assert parse(seed()).policy.identity is Identity.AIRFLOW
