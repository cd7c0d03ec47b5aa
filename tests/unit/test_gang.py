"""gang: a multi-node attempt's pods, Service and variables, and what the members' states say
about the gang, on recorded pods (tests/fixtures/pods/)."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from airflow_provider_skyshare import gang, pods
from airflow_provider_skyshare.fleet import OWNER
from airflow_provider_skyshare.gang import Member
from airflow_provider_skyshare.names import (
    GPU_RESOURCE,
    L_RANK,
    L_TASK_KEY,
    POD_GROUP_COUNT,
    POD_GROUP_LABEL,
    POD_GROUP_RETRIABLE,
    QUEUE_LABEL,
    Kind,
)
from airflow_provider_skyshare.placement import Request
from airflow_provider_skyshare.pods import TaskIdentity
from airflow_provider_skyshare.snapshot import NodeGpus

IDENTITY = TaskIdentity("dag", "Train_Multi.Node", "manual__2026-11-29T09:00:00+00:00",
                        try_number=12)
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def leader_pod(seed_fleet, nodes: int = 2, attempt: int = 103) -> dict[str, Any]:
    template = {"spec": {"containers": [
        {"name": "sidecar", "image": "busybox"},
        {"name": "base", "image": "pytorch", "env": [{"name": "MASTER_PORT", "value": "1"}]}]}}
    cluster = seed_fleet.for_org("rise").clusters["rise"]
    return pods.build(template, identity=IDENTITY, attempt=attempt, cluster=cluster,
                      tier=cluster.tier(OWNER), request=Request("T4", 2, "rise", nodes=nodes),
                      preemptions=0)


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    base = next(c for c in pod["spec"]["containers"] if c["name"] == "base")
    return {e["name"]: e["value"] for e in base["env"]}


def as_member(pod: dict[str, Any], name: str) -> dict[str, Any]:
    out = copy.deepcopy(pod)
    out["metadata"]["name"] = name
    return out


def last_of(pod_fixture, fixture: str) -> dict[str, Any]:
    return pod_fixture(fixture)["events"][-1]["object"]


# -- names and objects -----------------------------------------------------------------------
def test_members_are_named_after_the_leader_whose_name_is_the_attempts(seed_fleet):
    leader = IDENTITY.pod_name(103)
    names = gang.member_names(leader, 3)
    assert names == (leader, f"{leader}-r1", f"{leader}-r2")
    assert [pods.attempt_in_name(n) for n in names] == [103, 103, 103]
    # a hostname and a Service name must be DNS labels (a Service's starts with a letter)
    assert all(DNS_LABEL.match(n) or n[0].isdigit() for n in names)
    assert all(len(n) <= 63 for n in (*names, gang.service_name(leader)))
    assert DNS_LABEL.match(gang.service_name("3d-train-1a2b3c4d-t1-a1"))


def test_each_member_is_in_one_kueue_pod_group_with_its_rank_and_variables(seed_fleet):
    leader = leader_pod(seed_fleet)
    name = leader["metadata"]["name"]
    group = gang.members(leader, 2, 2, pods.main_index(leader["spec"]))
    assert [p["metadata"]["name"] for p in group] == [name, f"{name}-r1"]
    for rank, pod in enumerate(group):
        labels, annotations = pod["metadata"]["labels"], pod["metadata"]["annotations"]
        assert labels[POD_GROUP_LABEL] == name and labels[L_RANK] == str(rank)
        assert annotations[POD_GROUP_COUNT] == "2" and annotations[POD_GROUP_RETRIABLE] == "false"
        assert labels[QUEUE_LABEL] == leader["metadata"]["labels"][QUEUE_LABEL]
        assert (pod["spec"]["hostname"], pod["spec"]["subdomain"]) == (
            pod["metadata"]["name"], gang.service_name(name))
        env = env_of(pod)
        assert env["MASTER_ADDR"] == env["PET_MASTER_ADDR"] == f"{name}.{gang.service_name(name)}"
        assert env["MASTER_PORT"] == "29500"  # the template's own value gives way
        assert (env["RANK"], env["NODE_RANK"], env["PET_NODE_RANK"]) == (str(rank),) * 3
        assert (env["WORLD_SIZE"], env["NNODES"], env["PET_NNODES"]) == ("2", "2", "2")
        assert env["PET_NPROC_PER_NODE"] == "2"
        base = pod["spec"]["containers"][1]
        assert base["resources"]["limits"][GPU_RESOURCE] == "2"
        assert "env" not in pod["spec"]["containers"][0]  # the sidecar is left alone
    assert "hostname" not in leader["spec"]  # the leader's body is copied, not changed


def test_the_service_is_headless_selects_the_group_and_goes_with_the_leader(seed_fleet):
    leader = leader_pod(seed_fleet)
    group = gang.members(leader, 2, 2, 1)
    service = gang.service(group[0])
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    selector = service["spec"]["selector"]
    assert all(selector.items() <= p["metadata"]["labels"].items() for p in group)
    assert service["metadata"]["labels"][L_TASK_KEY] == IDENTITY.key
    owned = gang.owned_by(service, {"metadata": {"name": "lead", "uid": "u-1"}})
    assert owned["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Pod", "name": "lead", "uid": "u-1"}]
    assert "ownerReferences" not in service["metadata"]


def test_rank_and_size_are_read_from_a_member():
    member = {"metadata": {"labels": {L_RANK: "3"}, "annotations": {POD_GROUP_COUNT: "4"}}}
    assert (gang.rank_of(member), gang.size_of(member)) == (3, 4)
    assert (gang.rank_of({}), gang.size_of({})) == (0, 1)
    odd = {"metadata": {"labels": {L_RANK: "x"}, "annotations": {POD_GROUP_COUNT: "0"}}}
    assert (gang.rank_of(odd), gang.size_of(odd)) == (0, 1)


# -- the member that speaks for the gang -------------------------------------------------------
NAMES = ("lead", "lead-r1")


def known(pod_fixture, *members: tuple[str, str, bool]) -> tuple[Member, ...]:
    """(name, fixture or '' for never seen, gone)"""
    return tuple(Member(n, as_member(last_of(pod_fixture, f), n) if f else None, g)
                 for n, f, g in members)


@pytest.mark.parametrize(("lead", "other", "speaker", "kind"), [
    ("running", "running", "lead", Kind.RUNNING),
    ("running", "pending_gated", "lead-r1", Kind.PENDING),  # running only once all run
    ("succeeded", "running", "lead-r1", Kind.RUNNING),  # done only once all are
    ("succeeded", "succeeded", "lead", Kind.SUCCEEDED),
    ("running", "failed", "lead-r1", Kind.FAILED),
    ("failed", "kueue_preempted", "lead-r1", Kind.PREEMPTED),  # taken wins: the gang moves
    ("kueue_preempted", "running", "lead", Kind.PREEMPTED),
    ("scheduler_preempted", "succeeded", "lead", Kind.PREEMPTED),
])
def test_the_gang_is_its_least_advanced_member_unless_one_is_taken_or_failed(
        pod_fixture, lead, other, speaker, kind):
    found = gang.view(NAMES, known(pod_fixture, ("lead", lead, False), ("lead-r1", other, False)))
    assert found is not None and (found.name, found.outcome.kind) == (speaker, kind)


def test_a_member_not_seen_yet_says_nothing_unless_another_is_taken(pod_fixture):
    assert gang.view(NAMES, known(pod_fixture, ("lead", "running", False))) is None
    taken = gang.view(NAMES, known(pod_fixture, ("lead-r1", "kueue_preempted", False)))
    assert taken is not None and taken.name == "lead-r1"


def test_a_member_gone_takes_the_gang_but_one_gone_after_its_success_does_not(pod_fixture):
    members = known(pod_fixture, ("lead", "running", False), ("lead-r1", "running", False))
    found = gang.view(NAMES, gang.gone(members, "lead-r1"))
    assert found is not None and found.name == "lead-r1" and found.outcome.kind is Kind.LOST
    unseen = gang.view(NAMES, gang.gone(members[:1], "lead-r1"))  # gone before it was seen
    assert unseen is not None and unseen.pod is None and unseen.outcome.kind is Kind.LOST
    done = known(pod_fixture, ("lead", "succeeded", True), ("lead-r1", "succeeded", False))
    found = gang.view(NAMES, done)
    assert found is not None and found.outcome.kind is Kind.SUCCEEDED


def test_a_member_seen_again_replaces_what_was_known(pod_fixture):
    members = known(pod_fixture, ("lead", "pending_gated", False), ("lead-r1", "running", False))
    members = gang.seen(members, as_member(last_of(pod_fixture, "running"), "lead"), False)
    assert len(members) == 2
    found = gang.view(NAMES, members)
    assert found is not None and found.outcome.kind is Kind.RUNNING


def test_a_gang_has_stopped_when_no_member_seen_is_still_running(pod_fixture):
    running = known(pod_fixture, ("lead", "running", False), ("lead-r1", "running", False))
    assert gang.stopping(NAMES, running).name == "lead"  # type: ignore[union-attr]
    assert gang.stopping(NAMES, gang.gone(running, "lead")).name == "lead-r1"  # type: ignore
    ended = known(pod_fixture, ("lead", "succeeded", False), ("lead-r1", "failed", False))
    assert gang.stopping(NAMES, ended) is None
    assert gang.stopping(NAMES, known(pod_fixture, ("lead", "", False))) is None  # never seen


def test_a_gang_taken_deletes_only_the_members_nobody_is_deleting(pod_fixture):
    events = pod_fixture("kueue_preempted")["events"]
    marked = next(e["object"] for e in events if e["object"]["metadata"].get("deletionTimestamp"))
    members = (*known(pod_fixture, ("lead", "running", False)),
               Member("lead-r1", as_member(marked, "lead-r1")))
    assert gang.staying(NAMES, members) == ("lead",)  # r1: Kueue deletes it, with its grace
    assert gang.staying(NAMES, gang.gone(members, "lead")) == ()
    assert gang.staying(NAMES, ()) == NAMES  # never seen: they may exist


# -- does the whole gang fit? ----------------------------------------------------------------
def test_slots_count_members_per_node_and_room_counts_all_gpus():
    nodes = [NodeGpus("a", "T4", 4, 0, 0), NodeGpus("b", "T4", 4, 3, 2),
             NodeGpus("c", "T4", 2, 2, 2)]
    assert gang.slots(nodes, 2) == 2  # a holds two members, b has 1 GPU, c none
    assert gang.slots(nodes, 2, borrowed=True) == 4  # b: 1 + 2 lent; c: 2 lent
    assert gang.room(nodes, 2) == 5
    assert gang.slots(nodes, 4) == 1 and gang.room(nodes, 4) == 2
