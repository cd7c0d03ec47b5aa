"""The pod of one attempt: Kueue wiring, GPUs, deterministic valid names, findable labels."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_skyshare import gang, pods
from airflow_provider_skyshare.fleet import BORROWER, OWNER, Cluster, Fleet
from airflow_provider_skyshare.names import A_ORPHANS
from airflow_provider_skyshare.placement import Request
from airflow_provider_skyshare.pods import TaskIdentity, attempt_of, build, label_value, timeline_from_pod
from airflow_provider_skyshare.timeline import Attempt, Timeline

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
FAST = settings(max_examples=200, deadline=None, database=None)

RUN = "manual__2026-11-22T16:28:41.123456+00:00"
ROMIL = Request("T4", 2, "rise", "romil")
TEMPLATE: dict[str, Any] = {
    "metadata": {"labels": {"team": "ml"}, "annotations": {"owner": "romil"},
                 "generateName": "should-go-"},
    "spec": {
        "priority": 1000,
        "nodeSelector": {"cloud.google.com/gke-spot": "false"},
        "containers": [
            {"name": "sidecar", "image": "envoy"},
            {"name": "base", "image": "nvcr.io/nvidia/pytorch:24.05-py3",
             "command": ["python", "train.py"],
             "resources": {"limits": {"cpu": "4", "nvidia.com/gpu": "8"},
                           "requests": {"memory": "16Gi"}},
             "env": [{"name": "EPOCHS", "value": "10"},
                     {"name": "SKYSHARE_ATTEMPT", "value": "stale"}]},
        ],
    },
}


@pytest.fixture
def fleet(fleet_of: Callable[..., Fleet]) -> Fleet:
    return fleet_of([
        {"name": "rise", "owner": "rise", "namespace": "rise-jobs"},
        {"name": "bair", "owner": "bair", "gpu_label": "cloud.example/accelerator",
         "gpu_products": {"T4": "nvidia-tesla-t4"}},
    ])


@pytest.fixture
def bair(fleet: Fleet) -> Cluster:
    return fleet.clusters["bair"]


def identity(**changes: Any) -> TaskIdentity:
    base = {"dag_id": "train", "task_id": "romil-train", "run_id": RUN, "try_number": 1,
            "map_index": -1}
    return TaskIdentity(**{**base, **changes})


def expected_key(dag: str, task: str, run: str, map_index: int = -1) -> str:
    return hashlib.sha256(f"{dag}\x00{task}\x00{run}\x00{map_index}".encode()).hexdigest()[:16]


def borrowed_pod(bair: Cluster, **kw: Any) -> dict[str, Any]:
    args = {"identity": identity(), "attempt": 2, "cluster": bair, "tier": bair.tier(BORROWER),
            "request": ROMIL, "preemptions": 1, "history_json": "[]"}
    args.update(kw)
    template = args.pop("template", TEMPLATE)
    return build(template, **args)


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


def test_kueue_labels_and_priority_class_borrower(bair: Cluster) -> None:
    pod = borrowed_pod(bair)
    labels = pod["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/queue-name"] == "skyshare-borrower"
    assert labels["kueue.x-k8s.io/priority-class"] == "low-priority"
    assert pod["spec"]["priorityClassName"] == "low-priority"
    assert labels["skyshare.dev/tier"] == "borrower"


def test_kueue_labels_and_priority_class_owner(fleet: Fleet) -> None:
    rise = fleet.clusters["rise"]
    pod = build(TEMPLATE, identity=identity(), attempt=1, cluster=rise, tier=rise.tier(OWNER),
                request=ROMIL, preemptions=0)
    labels = pod["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/queue-name"] == "skyshare-owner"
    assert labels["kueue.x-k8s.io/priority-class"] == "high-priority"
    assert pod["spec"]["priorityClassName"] == "high-priority"
    assert pod["metadata"]["namespace"] == "rise-jobs"
    assert pod["spec"]["nodeSelector"]["nvidia.com/gpu.product"] == "Tesla-T4"


def test_custom_tier_names_are_used(fleet_of: Callable[..., Fleet]) -> None:
    c = fleet_of([{"name": "rise", "owner": "rise", "tiers": {"owner": {
        "local_queue": "home-q", "priority_class": "pc-home", "workload_priority_class": "wpc-home"}}}]
    ).clusters["rise"]
    pod = build(TEMPLATE, identity=identity(), attempt=1, cluster=c, tier=c.tier(OWNER),
                request=ROMIL, preemptions=0)
    assert pod["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "home-q"
    assert pod["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "wpc-home"
    assert pod["spec"]["priorityClassName"] == "pc-home"


def test_priority_value_is_dropped(bair: Cluster) -> None:
    """Admission fills spec.priority from the class; a stale number would be rejected."""
    assert "priority" not in borrowed_pod(bair)["spec"]


def test_gpus_on_the_base_container(bair: Cluster) -> None:
    pod = borrowed_pod(bair)
    sidecar, base = pod["spec"]["containers"]
    assert "resources" not in sidecar and "env" not in sidecar
    assert base["resources"]["limits"] == {"cpu": "4", "nvidia.com/gpu": "2"}
    assert base["resources"]["requests"] == {"memory": "16Gi", "nvidia.com/gpu": "2"}


def test_first_container_when_none_is_called_base(bair: Cluster) -> None:
    template = {"spec": {"containers": [{"name": "main", "image": "x"}, {"name": "log", "image": "y"}]}}
    pod = borrowed_pod(bair, template=template)
    main, log = pod["spec"]["containers"]
    assert main["resources"] == {"limits": {"nvidia.com/gpu": "2"}, "requests": {"nvidia.com/gpu": "2"}}
    assert "resources" not in log


def test_node_selector_on_the_product(bair: Cluster) -> None:
    pod = borrowed_pod(bair)
    assert pod["spec"]["nodeSelector"] == {"cloud.google.com/gke-spot": "false",
                                           "cloud.example/accelerator": "nvidia-tesla-t4"}


def test_env_says_attempt_cluster_preemptions(bair: Cluster) -> None:
    base = borrowed_pod(bair, attempt=3, preemptions=2)["spec"]["containers"][1]
    assert env_of(base) == {"EPOCHS": "10", "SKYSHARE_ATTEMPT": "3", "SKYSHARE_CLUSTER": "bair",
                            "SKYSHARE_PREEMPTIONS": "2", "SKYSHARE_TIER": "borrower"}
    assert [e["name"] for e in base["env"]].count("SKYSHARE_ATTEMPT") == 1


def test_env_of_a_template_without_env(bair: Cluster) -> None:
    pod = borrowed_pod(bair, template={"spec": {"containers": [{"name": "base", "image": "x"}]}},
                       attempt=1, preemptions=0)
    assert env_of(pod["spec"]["containers"][0]) == {
        "SKYSHARE_ATTEMPT": "1", "SKYSHARE_CLUSTER": "bair", "SKYSHARE_PREEMPTIONS": "0",
        "SKYSHARE_TIER": "borrower"}


def test_metadata(bair: Cluster) -> None:
    history = Timeline((Attempt(1, "bair", BORROWER, "p1", "skyshare", 1.0, ended_at=2.0,
                                outcome="Preempted"),))
    pod = borrowed_pod(bair, history_json=history.to_json())
    meta = pod["metadata"]
    assert pod["apiVersion"] == "v1" and pod["kind"] == "Pod"
    assert meta["namespace"] == "skyshare-rise"  # the org of the request (romil of rise)
    assert "generateName" not in meta
    key = expected_key("train", "romil-train", RUN)
    assert meta["name"] == f"romil-train-{key[:8]}-t1-a2"
    assert meta["labels"] == {
        "team": "ml",
        "app.kubernetes.io/managed-by": "airflow-provider-skyshare",
        "skyshare.dev/task-key": key,
        "skyshare.dev/dag-id": "train",
        "skyshare.dev/task-id": "romil-train",
        "skyshare.dev/run-id": label_value(RUN),
        "skyshare.dev/try": "1",
        "skyshare.dev/attempt": "2",
        "skyshare.dev/org": "rise",
        "skyshare.dev/tier": "borrower",
        "kueue.x-k8s.io/queue-name": "skyshare-borrower",
        "kueue.x-k8s.io/priority-class": "low-priority",
    }
    assert meta["annotations"]["owner"] == "romil"
    assert meta["annotations"]["skyshare.dev/task"] == f"train/romil-train/{RUN}"
    assert meta["annotations"]["skyshare.dev/request"] == "T4:2 org=rise user=romil"
    assert Timeline.from_json(meta["annotations"]["skyshare.dev/history"]) == history


def test_request_annotation_without_user(bair: Cluster) -> None:
    pod = borrowed_pod(bair, request=Request("T4", 1, "rise"))
    assert pod["metadata"]["annotations"]["skyshare.dev/request"] == "T4:1 org=rise user=-"


def test_restart_policy_defaults_to_never_but_template_wins(bair: Cluster) -> None:
    assert borrowed_pod(bair)["spec"]["restartPolicy"] == "Never"
    template = copy.deepcopy(TEMPLATE)
    template["spec"]["restartPolicy"] = "OnFailure"
    assert borrowed_pod(bair, template=template)["spec"]["restartPolicy"] == "OnFailure"


def test_template_is_not_modified(bair: Cluster) -> None:
    before = copy.deepcopy(TEMPLATE)
    borrowed_pod(bair)
    assert before == TEMPLATE


def test_null_sections_in_template(bair: Cluster) -> None:
    template = {"metadata": {"labels": None, "annotations": None},
                "spec": {"nodeSelector": None, "containers": [
                    {"name": "base", "resources": {"limits": None, "requests": None}, "env": None}]}}
    pod = borrowed_pod(bair, template=template)
    assert pod["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "skyshare-borrower"
    assert pod["spec"]["nodeSelector"] == {"cloud.example/accelerator": "nvidia-tesla-t4"}
    assert pod["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "2"}


@pytest.mark.parametrize("template", [{}, {"spec": {}}, {"spec": {"containers": []}}])
def test_template_without_container_is_refused(bair: Cluster, template: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="no container"):
        borrowed_pod(bair, template=template)


def test_pod_is_json(bair: Cluster) -> None:
    pod = borrowed_pod(bair)
    assert json.loads(json.dumps(pod)) == pod


# -- names -----------------------------------------------------------------------------------


def test_same_inputs_same_name(bair: Cluster) -> None:
    assert borrowed_pod(bair) == borrowed_pod(bair)
    assert identity().pod_name(4) == identity().pod_name(4)


@pytest.mark.parametrize("other", [
    identity(dag_id="train2"), identity(task_id="romil-train2"), identity(run_id=RUN + "x"),
    identity(try_number=2), identity(map_index=0),
])
def test_name_changes_with_each_part(other: TaskIdentity) -> None:
    assert other.pod_name(1) != identity().pod_name(1)


def test_name_changes_with_attempt() -> None:
    names = {identity().pod_name(a) for a in range(1, 20)}
    assert len(names) == 19


@pytest.mark.parametrize(("task_id", "slug"), [
    ("romil-train", "romil-train"),
    ("Romil_Train.Step", "romil-train-step"),
    ("__init__", "init"),
    ("训练", "task"),
    ("", "task"),
    ("a" * 100, "a" * 30),
    ("a" * 29 + "_b", "a" * 29),  # the cut lands on a '-': trimmed
    ("group.sub-task", "group-sub-task"),
])
def test_name_slug(task_id: str, slug: str) -> None:
    t = identity(task_id=task_id)
    key = expected_key("train", task_id, RUN)
    assert t.pod_name(1) == f"{slug}-{key[:8]}-t1-a1"


ids = st.text(min_size=0, max_size=300)


@FAST
@given(ids, ids, ids, st.integers(1, 10**6), st.integers(-1, 10**6), st.integers(1, 10**6))
def test_names_are_dns_labels(dag: str, task: str, run: str, try_number: int, map_index: int,
                              attempt: int) -> None:
    t = TaskIdentity(dag, task, run, try_number, map_index)
    name = t.pod_name(attempt)
    assert len(name) <= 63
    assert DNS_LABEL.fullmatch(name), name
    assert name.endswith(f"-t{try_number}-a{attempt}")


@FAST
@given(st.text(max_size=200))
def test_label_values_are_valid(value: str) -> None:
    out = label_value(value)
    assert len(out) <= 63
    assert LABEL_VALUE.fullmatch(out), out
    assert label_value(out) == out  # idempotent
    if len(value) <= 63 and LABEL_VALUE.fullmatch(value):
        assert out == value  # clean values are kept as they are


def test_sanitising_does_not_merge_values() -> None:
    """'a b' and 'a_b' sanitise alike; the hash keeps them apart."""
    assert len({label_value(v) for v in ("a b", "a_b", "a/b", "a:b", " a_b")}) == 5


@pytest.mark.parametrize(("value", "out"), [
    ("train", "train"),
    ("romil-train", "romil-train"),
    ("a.b_c-D9", "a.b_c-D9"),
    ("", ""),
    ("x" * 63, "x" * 63),
])
def test_clean_label_values_unchanged(value: str, out: str) -> None:
    assert label_value(value) == out


def test_odd_label_values_keep_a_hash() -> None:
    digest = hashlib.sha256(RUN.encode()).hexdigest()[:8]
    assert label_value(RUN) == f"manual__2026-11-22T16_28_41.123456_00_00_{digest}"
    long = "y" * 64
    assert label_value(long) == "y" * 54 + "_" + hashlib.sha256(long.encode()).hexdigest()[:8]
    assert label_value("训练") == hashlib.sha256("训练".encode()).hexdigest()[:8]


def test_long_and_odd_ids_build_a_valid_pod(bair: Cluster) -> None:
    t = TaskIdentity("DAG with spaces/and/slashes" * 5, "Task.ID_" * 20, "run:" + "∂" * 100, 17, 3)
    pod = borrowed_pod(bair, identity=t, attempt=123)
    assert DNS_LABEL.fullmatch(pod["metadata"]["name"]) and len(pod["metadata"]["name"]) <= 63
    for k, v in pod["metadata"]["labels"].items():
        assert len(v) <= 63 and LABEL_VALUE.fullmatch(v), (k, v)
    assert pod["metadata"]["annotations"]["skyshare.dev/task"] == f"{t.dag_id}/{t.task_id}/{t.run_id}/3"


# -- finding the pods of a task --------------------------------------------------------------


def matches(selector: str, labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in (part.split("=", 1) for part in selector.split(",")))


def test_selector_finds_every_pod_of_the_task(fleet: Fleet) -> None:
    built = []
    for try_number in (1, 2):
        t = identity(try_number=try_number)
        for attempt, name in enumerate(["rise", "bair", "rise"], start=1):
            c = fleet.clusters[name]
            built.append((try_number, build(TEMPLATE, identity=t, attempt=attempt, cluster=c,
                                            tier=c.tier(OWNER), request=ROMIL, preemptions=0)))
    everything = identity().selector(this_try=False)
    assert all(matches(everything, p["metadata"]["labels"]) for _, p in built)
    this_try = identity(try_number=2).selector()
    assert [t for t, p in built if matches(this_try, p["metadata"]["labels"])] == [2, 2, 2]
    assert len({p["metadata"]["name"] for _, p in built}) == 6
    # another task of the same run is not selected
    other = identity(task_id="abbeel").selector(this_try=False)
    assert not any(matches(other, p["metadata"]["labels"]) for _, p in built)


def test_selector_text() -> None:
    key = expected_key("train", "romil-train", RUN)
    assert identity(try_number=3).selector() == f"skyshare.dev/task-key={key},skyshare.dev/try=3"
    assert identity(try_number=3).selector(this_try=False) == f"skyshare.dev/task-key={key}"


def test_key_is_stable_across_tries_but_not_map_indexes() -> None:
    assert identity(try_number=1).key == identity(try_number=5).key
    assert identity(map_index=0).key != identity(map_index=1).key != identity().key
    assert len(identity().key) == 16


def test_key_does_not_collide_on_separator() -> None:
    """('a-b', 'c') and ('a', 'b-c') are different tasks."""
    assert TaskIdentity("a-b", "c", "r").key != TaskIdentity("a", "b-c", "r").key
    assert TaskIdentity("a/b", "c", "r").key != TaskIdentity("a", "b/c", "r").key


def test_path() -> None:
    assert identity().path == f"train/romil-train/{RUN}"
    assert identity(map_index=4).path == f"train/romil-train/{RUN}/4"


def test_identity_round_trip() -> None:
    t = identity(try_number=3, map_index=2)
    assert TaskIdentity(**json.loads(json.dumps(t.to_dict()))) == t


def test_attempt_of(bair: Cluster) -> None:
    assert attempt_of(borrowed_pod(bair, attempt=7)) == 7
    assert attempt_of({}) == 0
    assert attempt_of({"metadata": {"labels": None}}) == 0
    assert attempt_of({"metadata": {"labels": {"skyshare.dev/attempt": "x"}}}) == 0


def test_timeline_from_pod_keeps_history_and_creation_time() -> None:
    """How the CLI and a restarted trigger rebuild a task's story from its newest pod."""
    earlier = Timeline().add(Attempt(number=1, cluster="bair", tier="borrower", pod="p-a1",
                                     namespace="skyshare", placed_at=100.0, outcome="Preempted"))
    pod = {"metadata": {
        "name": "p-a2", "namespace": "skyshare",
        "creationTimestamp": "2026-11-23T10:00:05Z",
        "labels": {"skyshare.dev/attempt": "2", "skyshare.dev/tier": "owner"},
        "annotations": {"skyshare.dev/history": earlier.to_json()},
    }}
    t = timeline_from_pod("rise", pod, now=9.0)
    assert [(a.number, a.cluster, a.tier, a.outcome) for a in t.attempts] == [
        (1, "bair", "borrower", "Preempted"), (2, "rise", "owner", "")]
    assert t.last.placed_at == datetime(2026, 11, 23, 10, 0, 5, tzinfo=timezone.utc).timestamp()
    assert t.last.why == "adopted"


def test_timeline_from_a_bare_pod() -> None:
    t = timeline_from_pod("rise", {"metadata": {"name": "p", "namespace": "ns"}}, now=9.0)
    assert [(a.number, a.tier, a.pod) for a in t.attempts] == [(0, "", "p")]
    assert t.last.placed_at == 9.0  # the pod does not say when it was made: now


@pytest.mark.parametrize("text", [None, "", "not json", "{}", '[{"cluster": 1}]', '["x"]'])
def test_orphans_of_a_pod_that_carries_none_or_garbage_is_empty(text):
    annotations = {} if text is None else {A_ORPHANS: text}
    assert pods.orphans_of({"metadata": {"annotations": annotations}}) == []


def test_orphans_round_trip_through_the_pod():
    orphan = {"cluster": "rise", "namespace": "skyshare-rise", "pod": "train-1-t1-a1"}
    pod = {"metadata": {"annotations": {A_ORPHANS: json.dumps([orphan])}}}
    assert pods.orphans_of(pod) == [orphan]


def test_a_gangs_timeline_from_another_member_than_its_leader(
        fleet: Fleet, pod_fixture: Callable[[str], dict[str, Any]]) -> None:
    """Rank 0 gone, the newest pod found is rank 1: the attempt is still its leader's, named
    by the member's pod group, and its members are the leader's."""
    rise = fleet.clusters["rise"]
    leader = build(TEMPLATE, identity=identity(), attempt=2, cluster=rise,
                   tier=rise.tier(OWNER), request=Request("T4", 2, "rise", "romil", nodes=3),
                   preemptions=0)
    group = gang.members(leader, 3, 2, pods.main_index(leader["spec"]))
    seen = {**pod_fixture("running")["pod"], "metadata": group[1]["metadata"]}  # recorded shape
    lead = leader["metadata"]["name"]
    t = timeline_from_pod("rise", seen, now=9.0)
    assert (t.last.pod, t.last.members) == (lead, (lead, f"{lead}-r1", f"{lead}-r2"))
    assert t.last.number == 2
