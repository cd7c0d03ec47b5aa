"""follow.step for a gang (nodes=2): one attempt of two pods, admitted, ended and moved whole,
on recorded pods (tests/fixtures/pods/) renamed as the members."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest

from airflow_provider_skyshare import claims, finish, pods
from airflow_provider_skyshare.follow import (
    Claim,
    ClaimAnswer,
    ClaimResult,
    Create,
    CreateAnswer,
    Created,
    CreateFailed,
    Delete,
    Finish,
    Follow,
    Inquire,
    Job,
    Note,
    Orphan,
    Phase,
    PodGone,
    PodSeen,
    Probe,
    Probed,
    ReadBack,
    ReadBackAnswer,
    Settings,
    Start,
    Status,
    Tick,
    Unreachable,
    Watch,
    step,
)
from airflow_provider_skyshare.names import POD_GROUP_LABEL, Kind
from airflow_provider_skyshare.placement import Request
from airflow_provider_skyshare.pods import TaskIdentity
from airflow_provider_skyshare.timeline import Timeline

T0 = 1_800_000_000.0
IDENTITY = TaskIdentity("dag", "train", "run-1", try_number=1)
TEMPLATE = {"spec": {"containers": [{"name": "base", "image": "pytorch"}]}}
LEAD = IDENTITY.pod_name(1)
MEMBERS = (LEAD, f"{LEAD}-r1")


@pytest.fixture
def two_nodes(cap, snap):
    """rise and bair each with two 2xT4 nodes, all free."""
    return snap(cap("rise", (2, 0), (2, 0)), cap("bair", (2, 0), (2, 0)))


def make(fleet, nodes: int = 2, **settings: Any) -> Follow:
    job = Job(fleet, Request("T4", 2, "rise", "romil", nodes=nodes), TEMPLATE, IDENTITY,
              Settings(**settings))
    return Follow(job)


def the(actions: list, kind: type) -> Any:
    found = [a for a in actions if isinstance(a, kind)]
    assert len(found) == 1, actions
    return found[0]


def kinds(actions: list) -> list[type]:
    return [type(a) for a in actions if not isinstance(a, Note)]


def member(pod_fixture, fixture: str, name: str, index: int = -1) -> dict[str, Any]:
    pod = copy.deepcopy(pod_fixture(fixture)["events"][index]["object"])
    pod["metadata"]["name"] = name
    return pod


def placed(fleet, snapshot, **settings: Any) -> tuple[Follow, list]:
    state, _ = step(make(fleet, **settings), Start(), T0)
    state, actions = step(state, Probed(snapshot), T0)
    create = the(actions, Create)
    state, actions = step(state, Created(create.cluster), T0 + 0.1)
    return state, actions


def running(fleet, snapshot, pod_fixture, **settings: Any) -> Follow:
    state, _ = placed(fleet, snapshot, **settings)
    for name in MEMBERS:
        state, _ = step(state, PodSeen(member(pod_fixture, "running", name)), T0 + 1)
    assert state.timeline.last.started_at is not None
    return state


# -- placing ---------------------------------------------------------------------------------
def test_the_gang_is_created_as_its_leader_its_service_and_its_other_members(seed_fleet,
                                                                            two_nodes):
    state, _ = step(make(seed_fleet), Start(), T0)
    state, actions = step(state, Probed(two_nodes), T0)
    create = the(actions, Create)
    assert create.cluster == "rise" and create.pod["metadata"]["name"] == LEAD
    service, other = create.extra
    assert service["kind"] == "Service" and other["metadata"]["name"] == MEMBERS[1]
    assert {p["metadata"]["labels"][POD_GROUP_LABEL] for p in (create.pod, other)} == {LEAD}
    state, actions = step(state, Created("rise"), T0 + 0.1)
    watch = the(actions, Watch)
    assert (watch.pod, watch.members) == (LEAD, MEMBERS)
    assert state.timeline.last.members == MEMBERS and state.timeline.last.pod == LEAD


def test_one_node_creates_and_watches_one_pod_as_before(seed_fleet, two_nodes):
    state, _ = step(make(seed_fleet, nodes=1), Start(), T0)
    state, actions = step(state, Probed(two_nodes), T0)
    assert the(actions, Create).extra == ()
    state, actions = step(state, Created("rise"), T0 + 0.1)
    assert the(actions, Watch).members == () and state.timeline.last.members == ()
    assert "nodes" not in state.to_dict()["request"]
    assert "members" not in state.timeline.to_list()[0]


def test_a_gang_round_trips_through_the_triggers_state(seed_fleet, two_nodes):
    state, _ = placed(seed_fleet, two_nodes)
    again = Follow.from_dict(state.to_dict(), state.job.fleet)
    assert again.job.request.nodes == 2 and again.timeline == state.timeline


def test_a_refused_gang_leaves_every_member_name_an_orphan_there(seed_fleet, two_nodes):
    state, _ = step(make(seed_fleet), Start(), T0)
    state, _ = step(state, Probed(two_nodes), T0)
    # the leader was made, the second member refused (4xx): the made part must go
    state, actions = step(state, CreateFailed("rise", CreateAnswer.REFUSED, "HTTP 403"), T0)
    assert set(state.orphans) == {Orphan("rise", "skyshare-rise", n) for n in MEMBERS}
    assert the(actions, Create).cluster == "bair"


def test_an_ambiguous_gang_create_reads_back_every_member(seed_fleet, two_nodes):
    state, _ = step(make(seed_fleet), Start(), T0)
    state, _ = step(state, Probed(two_nodes), T0)
    state, actions = step(state, CreateFailed("rise", CreateAnswer.NONE, "timeout"), T0)
    assert the(actions, ReadBack).members == MEMBERS


def test_a_gang_placed_again_where_it_was_refused_keeps_every_member(seed_fleet, two_nodes):
    """A create on rise left the gang's names orphans there; no cluster answered, so the same
    attempt goes to rise again and is made: none of its members is an orphan any more (else
    housekeeping would delete a live member, and the gang would move)."""
    state, _ = step(make(seed_fleet), Start(), T0)
    state, _ = step(state, Probed(two_nodes), T0)
    for cluster in ("rise", "bair"):  # no clear answer, and no answer to the read back
        state, _ = step(state, CreateFailed(cluster, CreateAnswer.NONE, "timeout"), T0)
        state, _ = step(state, ReadBackAnswer(cluster, Unreachable("reset"), "timeout"), T0)
    assert {Orphan("rise", "skyshare-rise", n) for n in MEMBERS} <= set(state.orphans)
    state, actions = step(state, Tick(), state.wake_at)
    state, actions = step(state, Probed(two_nodes), state.wake_at or T0 + 5)
    create = the(actions, Create)
    carried = {o["pod"] for o in pods.orphans_of(create.pod) if o["cluster"] == "rise"}
    assert create.cluster == "rise" and not carried & set(MEMBERS)  # its own: none carried
    state, actions = step(state, Created("rise"), T0 + 6)
    doomed = [a.orphan for a in actions if isinstance(a, Delete)]
    assert doomed and all(o.cluster == "bair" for o in doomed)
    assert all(o.cluster == "bair" for o in state.orphans)


# -- watching --------------------------------------------------------------------------------
def test_the_gang_runs_only_when_every_member_runs(seed_fleet, two_nodes, pod_fixture):
    state, _ = placed(seed_fleet, two_nodes)
    state, _ = step(state, PodSeen(member(pod_fixture, "running", LEAD)), T0 + 1)
    assert state.timeline.last.started_at is None  # the other member not seen yet
    state, _ = step(state, PodSeen(member(pod_fixture, "pending_gated", MEMBERS[1])), T0 + 1)
    assert state.timeline.last.started_at is None  # gated by Kueue: the gang waits whole
    state, actions = step(state, PodSeen(member(pod_fixture, "running", MEMBERS[1])), T0 + 2)
    assert state.timeline.last.started_at is not None
    assert any("running on rise" in a.text for a in actions if isinstance(a, Note))


def test_the_gang_succeeds_when_every_member_has(seed_fleet, two_nodes, pod_fixture):
    state = running(seed_fleet, two_nodes, pod_fixture)
    state, actions = step(state, PodSeen(member(pod_fixture, "succeeded", LEAD)), T0 + 5)
    assert state.verdict is None and Finish not in kinds(actions)
    state, actions = step(state, PodSeen(member(pod_fixture, "succeeded", MEMBERS[1])), T0 + 6)
    assert state.verdict is not None and state.verdict.status is Status.SUCCESS


def test_one_member_failed_fails_the_gang_and_the_verdict_deletes_every_member(
        seed_fleet, two_nodes, pod_fixture):
    state = running(seed_fleet, two_nodes, pod_fixture)
    state, _ = step(state, PodSeen(member(pod_fixture, "failed", MEMBERS[1])), T0 + 5)
    assert state.verdict is not None and state.verdict.status is Status.FAILED
    doomed = finish.to_delete(state, state.verdict, finish.FinishPolicy())
    assert {o.pod for o in doomed} == set(MEMBERS)


@pytest.mark.parametrize("action", [finish.FinishAction.KEEP_POD,
                                    finish.FinishAction.DELETE_SUCCEEDED_POD])
def test_a_failed_gang_kept_keeps_only_the_members_that_ended(seed_fleet, two_nodes,
                                                              pod_fixture, action):
    """One member failed, the leader still runs: kept, it would hold its GPUs with nobody
    following it, so only the member that ran to its end is kept."""
    state = running(seed_fleet, two_nodes, pod_fixture)
    state, _ = step(state, PodSeen(member(pod_fixture, "failed", MEMBERS[1])), T0 + 5)
    assert state.verdict is not None and state.verdict.status is Status.FAILED
    doomed = finish.to_delete(state, state.verdict, finish.FinishPolicy(on_finish_action=action))
    assert [o.pod for o in doomed] == [LEAD]


def test_a_gang_kept_whole_when_every_member_ended(seed_fleet, two_nodes, pod_fixture):
    state = running(seed_fleet, two_nodes, pod_fixture)
    state, _ = step(state, PodSeen(member(pod_fixture, "succeeded", LEAD)), T0 + 5)
    state, _ = step(state, PodSeen(member(pod_fixture, "failed", MEMBERS[1])), T0 + 6)
    policy = finish.FinishPolicy(on_finish_action=finish.FinishAction.KEEP_POD)
    assert finish.to_delete(state, state.verdict, policy) == []


def preempted_member(state: Follow, pod_fixture, at: float) -> tuple[Follow, list]:
    """Kueue marks the second member with TerminationTarget (the whole group is evicted)."""
    events = pod_fixture("kueue_preempted")["events"]
    marked = next(i for i, e in enumerate(events) if e["object"]["metadata"].get(
        "deletionTimestamp"))
    return step(state, PodSeen(member(pod_fixture, "kueue_preempted", MEMBERS[1], marked)), at)


def test_one_member_preempted_moves_the_whole_gang(seed_fleet, rise_two_full, pod_fixture):
    state = running(seed_fleet, rise_two_full, pod_fixture, wait_for_termination=False)
    assert state.timeline.last.cluster == "bair"  # borrowed
    state, actions = preempted_member(state, pod_fixture, T0 + 5)
    assert state.timeline.last.outcome == Kind.PREEMPTED.value
    # the leader is deleted now; the member Kueue is deleting keeps its grace period
    deleted = [a.orphan for a in actions if isinstance(a, Delete)]
    assert [(o.cluster, o.pod) for o in deleted] == [("bair", LEAD)]
    assert state.phase is Phase.PLACING and Claim in kinds(actions)  # the next gang, claimed
    claim = the(actions, Claim)
    assert claim.lease["metadata"]["name"] == LEAD  # one claim per gang attempt
    # the claim won, the gang is placed again as a whole on rise, now free
    body = {**claim.lease, "metadata": {**claim.lease["metadata"], "resourceVersion": "7"}}
    state, actions = step(state, ClaimAnswer(ClaimResult.WON, claims.read("bair", body)), T0 + 5)
    assert kinds(actions) == [Probe]
    state, actions = step(state, Probed(rise_two_full.__class__({
        **rise_two_full.clusters, "rise": _free(rise_two_full.clusters["rise"])})), T0 + 5)
    create = the(actions, Create)
    assert create.cluster == "rise" and len(create.extra) == 2
    state, actions = step(state, Created("rise"), T0 + 5.1)
    second = IDENTITY.pod_name(2)
    assert the(actions, Watch).members == (second, f"{second}-r1")
    assert [len(a.members) for a in state.timeline.attempts] == [2, 2]


def _free(capacity):
    return replace(capacity, nodes=tuple(replace(n, used=0) for n in capacity.nodes))


@pytest.fixture
def rise_two_full(cap, snap):
    """rise's two nodes busy with its own work; bair's two free."""
    return snap(cap("rise", (2, 2), (2, 2)), cap("bair", (2, 0), (2, 0)))


def test_a_move_waits_until_every_member_has_stopped(seed_fleet, rise_two_full, pod_fixture):
    state = running(seed_fleet, rise_two_full, pod_fixture)  # wait_for_termination=True
    state, actions = preempted_member(state, pod_fixture, T0 + 5)
    assert state.phase is Phase.DRAINING
    state, _ = step(state, PodSeen(member(pod_fixture, "kueue_preempted", MEMBERS[1]),
                                   deleted=True), T0 + 6)
    assert state.phase is Phase.DRAINING  # the leader still runs
    state, actions = step(state, PodGone(LEAD), T0 + 7)
    assert state.phase is Phase.PLACING and Claim in kinds(actions)


def test_a_member_gone_unseen_asks_its_events_by_its_own_name(seed_fleet, two_nodes,
                                                             pod_fixture):
    state = running(seed_fleet, two_nodes, pod_fixture)
    state, actions = step(state, PodGone(MEMBERS[1]), T0 + 5)
    assert the(actions, Inquire).pod == MEMBERS[1]
    # the other member's news meanwhile does not ask again
    state, actions = step(state, PodSeen(member(pod_fixture, "running", LEAD)), T0 + 5.1)
    assert actions == []


def test_a_member_lost_deletes_the_others(seed_fleet, two_nodes, pod_fixture):
    state = running(seed_fleet, two_nodes, pod_fixture, wait_for_termination=False)
    state, actions = step(state, PodSeen(member(pod_fixture, "running", LEAD), deleted=True),
                          T0 + 5)
    assert state.timeline.last.outcome == Kind.LOST.value
    assert [a.orphan.pod for a in actions if isinstance(a, Delete)] == [MEMBERS[1]]


def test_a_restarted_follower_watches_the_whole_gang(seed_fleet, two_nodes):
    state, _ = placed(seed_fleet, two_nodes)
    again = Follow.from_dict(state.to_dict(), state.job.fleet)
    again, actions = step(again, Start(), T0 + 9)
    assert the(actions, Watch).members == MEMBERS


def test_housekeeping_ticks_do_not_disturb_a_gang(seed_fleet, two_nodes, pod_fixture):
    state = running(seed_fleet, two_nodes, pod_fixture)
    state, actions = step(state, Tick(), state.wake_at or T0 + 20)
    assert state.phase is Phase.WATCHING and Finish not in kinds(actions)
    assert Timeline.from_list(state.timeline.to_list()) == state.timeline
