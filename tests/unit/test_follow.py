"""follow.step: every verdict and every move, on recorded pods (tests/fixtures/pods/).

No cluster, no clock, no Airflow: events in, (state, actions) out.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

import pytest

from airflow_provider_skyshare import claims, pods
from airflow_provider_skyshare.follow import (
    CLAIM_FRESH_SECONDS,
    TERMINATION_MARGIN,
    Claim,
    ClaimAnswer,
    ClaimResult,
    Create,
    CreateAnswer,
    CreateConflict,
    Created,
    CreateFailed,
    Delete,
    Deleted,
    Finish,
    Follow,
    Inquire,
    Inquired,
    Job,
    NamePreemptor,
    Note,
    OnUnreachable,
    Orphan,
    Phase,
    PodGone,
    PodSeen,
    PreemptorNamed,
    Probe,
    Probed,
    ReadBack,
    ReadBackAnswer,
    Recheck,
    Reconnected,
    Refusal,
    Settings,
    Start,
    Status,
    Tick,
    Unreachable,
    Watch,
    step,
    wake_at,
)
from airflow_provider_skyshare.names import L_ATTEMPT, L_TASK_KEY, Kind, Reason
from airflow_provider_skyshare.outcomes import Outcome
from airflow_provider_skyshare.placement import Request
from airflow_provider_skyshare.pods import TaskIdentity
from airflow_provider_skyshare.timeline import Attempt, Timeline

T0 = 1_800_000_000.0
IDENTITY = TaskIdentity("dag", "train", "run-1", try_number=1)
TEMPLATE = {"spec": {"containers": [{"name": "base", "image": "busybox"}]}}


@pytest.fixture
def free(cap, snap):
    """rise and bair both have 2 free T4s."""
    return snap(cap("rise", (2, 0)), cap("bair", (2, 0)))


@pytest.fixture
def rise_full(cap, snap):
    """rise is full with its own work; bair has 2 free."""
    return snap(cap("rise", (2, 2)), cap("bair", (2, 0)))


def make(fleet, **settings: Any) -> Follow:
    job = Job(fleet, Request("T4", 2, "rise", "romil"), TEMPLATE, IDENTITY, Settings(**settings))
    return Follow(job)


def kinds(actions: list) -> list[type]:
    return [type(a) for a in actions if not isinstance(a, Note)]


def the(actions: list, kind: type) -> Any:
    found = [a for a in actions if isinstance(a, kind)]
    assert len(found) == 1, actions
    return found[0]


def events_of(pod_fixture, name: str) -> list[PodSeen]:
    return [PodSeen(e["object"], deleted=e["type"] == "DELETED")
            for e in pod_fixture(name)["events"]]


def placed(fleet, snapshot, at: float = T0, **settings: Any) -> Follow:
    """Started, probed, created: watching attempt 1."""
    state, _ = step(make(fleet, **settings), Start(), at)
    state, actions = step(state, Probed(snapshot), at)
    state, _ = step(state, Created(the(actions, Create).cluster), at + 0.1)
    assert state.phase is Phase.WATCHING
    return state


def feed(state: Follow, events: list, at: float) -> tuple[Follow, list]:
    """Feed a pod's events while they matter: watching, or waiting for the pod to stop."""
    actions: list = []
    for i, event in enumerate(events):
        state, actions = step(state, event, at + i * 0.01)
        if state.phase not in (Phase.WATCHING, Phase.DRAINING):
            break
    return state, actions


def won(state: Follow, actions: list, at: float, version: str = "7") -> tuple[Follow, list]:
    """The API server's answer to the one Claim in ``actions``: created (or updated)."""
    claim = the(actions, Claim)
    cluster = claim.held.cluster if claim.held else claim.fences[0]
    body = {**claim.lease, "metadata": {**claim.lease["metadata"], "resourceVersion": version,
                                        "namespace": "skyshare-rise"}}
    return step(state, ClaimAnswer(ClaimResult.WON, claims.read(cluster, body)), at)


def moved(state: Follow, snapshot, at: float) -> tuple[Follow, list]:
    """Placing after a move: the claim (asked for when the move began) won, probed, the
    create asked for."""
    last = state.timeline.last
    body = claims.lease(namespace="skyshare-rise", name=last.pod, task_key=IDENTITY.key,
                        try_number=1, attempt=last.number + 1, holder=state.me, now=at,
                        history=state.timeline, successor=None, resource_version="7")
    state, actions = step(state, ClaimAnswer(ClaimResult.WON, claims.read(last.cluster, body)),
                          at)
    assert kinds(actions) == [Probe], actions
    return step(state, Probed(snapshot), at)


# -- placing -------------------------------------------------------------------------------
def test_start_without_an_attempt_probes_then_creates_on_the_best_cluster(seed_fleet, rise_full):
    state, actions = step(make(seed_fleet), Start(), T0)
    assert state.phase is Phase.PLACING and kinds(actions) == [Probe]
    assert the(actions, Probe).shared is False  # placement acts on what it sees: never shared
    state, actions = step(state, Probed(rise_full), T0)
    create = the(actions, Create)
    assert create.cluster == "bair"  # rise is full: borrow
    assert create.pod["metadata"]["name"] == IDENTITY.pod_name(1)
    assert any("placing T4:2 for org rise on bair" in a.text for a in actions
               if isinstance(a, Note))


def test_created_watches_the_new_pod_and_records_the_attempt(seed_fleet, free):
    state = placed(seed_fleet, free)
    last = state.timeline.last
    assert (last.number, last.cluster, last.tier, last.pod) == (
        1, "rise", "owner", IDENTITY.pod_name(1))
    assert last.placed_at == T0 + 0.1


def test_start_with_an_attempt_watches_it_and_places_nothing(seed_fleet, free):
    watching = placed(seed_fleet, free)
    resumed = Follow(watching.job, watching.timeline)
    state, actions = step(resumed, Start(), T0 + 5)
    assert state.phase is Phase.WATCHING
    assert kinds(actions) == [Watch]
    assert the(actions, Watch).pod == IDENTITY.pod_name(1)


def test_a_rejected_create_falls_through_to_the_next_candidate(seed_fleet, free):
    state, _ = step(make(seed_fleet), Start(), T0)
    state, actions = step(state, Probed(free), T0)
    assert the(actions, Create).cluster == "rise"
    state, actions = step(state, CreateFailed("rise", CreateAnswer.REFUSED,
                                              "HTTP 403: forbidden"), T0)
    assert kinds(actions) == [Create]  # refused outright: no read-back
    assert the(actions, Create).cluster == "bair"
    assert state.orphans == ()  # refused outright: nothing was made there


def ambiguous(seed_fleet, free, answer: CreateAnswer = CreateAnswer.NONE):
    """Placed on rise first; rise's create got no clear answer."""
    state, _ = step(make(seed_fleet), Start(), T0)
    state, _ = step(state, Probed(free), T0)
    return step(state, CreateFailed("rise", answer, "timed out"), T0)


@pytest.mark.parametrize("answer", [CreateAnswer.NONE, CreateAnswer.SERVER_ERROR])
def test_an_ambiguous_create_is_read_back_before_any_other_cluster_is_tried(
        seed_fleet, free, answer):
    state, actions = ambiguous(seed_fleet, free, answer)
    assert kinds(actions) == [ReadBack]  # no Create anywhere until rise has been asked
    assert the(actions, ReadBack) == ReadBack("rise", "skyshare-rise", IDENTITY.pod_name(1),
                                              "timed out")
    assert state.phase is Phase.PLACING and state.orphans == ()


def test_a_read_back_that_finds_the_pod_follows_it_there(seed_fleet, free):
    state, actions = ambiguous(seed_fleet, free)
    mine = {"metadata": {"name": IDENTITY.pod_name(1), "labels": {L_TASK_KEY: IDENTITY.key}}}
    state, actions = step(state, ReadBackAnswer("rise", PodSeen(mine), "timed out"), T0 + 1)
    assert state.phase is Phase.WATCHING and kinds(actions) == [Watch]
    assert (state.timeline.last.number, state.timeline.last.cluster) == (1, "rise")
    assert state.orphans == ()


def test_a_read_back_that_finds_no_pod_tries_the_next_cluster_keeping_the_name_as_orphan(
        seed_fleet, free):
    """The request may still be in rise's API server: if the pod appears later, it goes."""
    state, actions = ambiguous(seed_fleet, free)
    state, actions = step(state, ReadBackAnswer("rise", PodGone(), "timed out"), T0 + 1)
    assert the(actions, Create).cluster == "bair"
    assert state.orphans == (Orphan("rise", "skyshare-rise", IDENTITY.pod_name(1)),)
    assert state.refused[0][:2] == ("rise", Refusal.NOT_CREATED)


def test_a_read_back_answer_outside_placing_changes_nothing(seed_fleet, free):
    watching = placed(seed_fleet, free)
    mine = {"metadata": {"labels": {L_TASK_KEY: IDENTITY.key}}}
    state, actions = step(watching, ReadBackAnswer("bair", PodSeen(mine), "late"), T0 + 1)
    assert actions == [] and state.phase is Phase.WATCHING
    assert (state.timeline, state.orphans) == (watching.timeline, watching.orphans)


def test_the_pod_being_created_never_carries_itself_as_an_orphan(seed_fleet, free):
    """Back on a cluster whose create had no answer: same name, so not its own orphan."""
    state, _ = ambiguous(seed_fleet, free)
    state, _ = step(state, ReadBackAnswer("rise", Unreachable("down"), "timed out"), T0)
    state, _ = step(state, CreateFailed("bair", CreateAnswer.NONE, "timed out"), T0)
    state, actions = step(state, ReadBackAnswer("bair", Unreachable("down"), "t"), T0)
    assert len(state.orphans) == 2 and state.phase is Phase.PLACING
    state, actions = step(state, Tick(), state.wake_at)  # both down: another round
    state, actions = step(state, Probed(free), state.wake_at)
    create = the(actions, Create)
    carried = {(o["cluster"], o["pod"]) for o in pods.orphans_of(create.pod)}
    assert (create.cluster, create.pod["metadata"]["name"]) not in carried and len(carried) == 1


def test_a_retried_round_does_not_record_an_orphan_twice(seed_fleet, free):
    state, _ = ambiguous(seed_fleet, free)
    state, _ = step(state, ReadBackAnswer("rise", Unreachable("down"), "timed out"), T0)
    state, _ = step(state, CreateFailed("bair", CreateAnswer.REFUSED, "HTTP 403"), T0)
    state, _ = step(state, Tick(), state.wake_at)
    state, _ = step(state, Probed(free), state.wake_at)
    state, _ = step(state, CreateFailed("rise", CreateAnswer.NONE, "timed out"), T0 + 1)
    state, _ = step(state, ReadBackAnswer("rise", Unreachable("down"), "timed out"), T0 + 1)
    assert [o.cluster for o in state.orphans] == ["rise"]


def test_not_created_is_retried_then_given_up_after_the_retry_window(seed_fleet, free):
    state, _ = step(make(seed_fleet, placement_retry_seconds=3), Start(), T0)
    now = T0
    for _ in range(20):
        state, _ = step(state, Probed(free), now)
        for cluster in ("rise", "bair"):
            if state.phase is not Phase.PLACING:
                break
            state, _ = step(state, CreateFailed(cluster, CreateAnswer.SERVER_ERROR, "500"), now)
            state, _ = step(state, ReadBackAnswer(cluster, PodGone(), "500"), now)
        if state.verdict is not None:
            break
        now = state.wake_at
        state, _ = step(state, Tick(), now)
    assert state.verdict.status is Status.NO_PLACEMENT and now > T0 + 3
    assert "not created" in state.verdict.message


def test_a_read_back_finding_another_tasks_pod_is_refused_not_adopted(seed_fleet, free):
    state, actions = ambiguous(seed_fleet, free)
    other = {"metadata": {"labels": {L_TASK_KEY: "someone-else"}}}
    state, actions = step(state, ReadBackAnswer("rise", PodSeen(other), "timed out"), T0 + 1)
    assert the(actions, Create).cluster == "bair" and state.orphans == ()
    assert state.refused[0][:2] == ("rise", Refusal.NAME_TAKEN)


def test_an_unanswered_read_back_leaves_an_orphan_carried_on_the_next_pod(seed_fleet, free):
    """The pod may exist on rise: it is deleted once placed elsewhere, and the pod made on
    bair carries it, so a follower that restarts still deletes it."""
    state, _ = ambiguous(seed_fleet, free)
    state, actions = step(state, ReadBackAnswer("rise", Unreachable("reset"), "timed out"), T0)
    orphan = Orphan("rise", "skyshare-rise", IDENTITY.pod_name(1))
    assert state.orphans == (orphan,)
    assert the(actions, Create).cluster == "bair"
    assert pods.orphans_of(the(actions, Create).pod) == [asdict(orphan)]
    state, actions = step(state, Created("bair"), T0)
    assert the(actions, Delete).orphan == orphan
    state, _ = step(state, Deleted(orphan, done=False), T0)
    assert state.orphans == (orphan,)  # still unreachable: kept, tried again later
    state, actions = step(state, Tick(), T0 + 10)
    assert the(actions, Delete).orphan == orphan
    state, _ = step(state, Deleted(orphan, done=True), T0 + 10)
    assert state.orphans == ()


def test_creating_where_an_ambiguous_create_succeeded_adopts_and_keeps_the_pod(seed_fleet,
                                                                             free):
    state, _ = step(make(seed_fleet), Start(), T0)
    state, _ = step(state, Probed(free), T0)
    for cluster in ("rise", "bair"):
        state, _ = step(state, CreateFailed(cluster, CreateAnswer.NONE, "timed out"), T0)
        state, _ = step(state, ReadBackAnswer(cluster, Unreachable("down"), "timed out"), T0)
    state, actions = step(state, Tick(), state.wake_at)  # both down: retry the round
    state, actions = step(state, Probed(free), state.wake_at)
    existing = {"metadata": {"labels": {L_TASK_KEY: IDENTITY.key}}}
    state, actions = step(state, CreateConflict(the(actions, Create).cluster, existing), T0 + 1)
    assert state.phase is Phase.WATCHING
    current = state.timeline.last
    assert (current.cluster, current.pod) not in {(o.cluster, o.pod) for o in state.orphans}
    assert current.pod not in [a.orphan.pod for a in actions if isinstance(a, Delete)
                               and a.orphan.cluster == current.cluster]


def test_a_name_taken_by_another_task_is_refused_not_adopted(seed_fleet, free):
    state, _ = step(make(seed_fleet), Start(), T0)
    state, _ = step(state, Probed(free), T0)
    other = {"metadata": {"labels": {L_TASK_KEY: "someone-else"}}}
    state, actions = step(state, CreateConflict("rise", other), T0)
    assert state.phase is Phase.PLACING
    assert the(actions, Create).cluster == "bair"
    assert state.refused[0][:2] == ("rise", Refusal.NAME_TAKEN)
    assert state.orphans == ()  # never delete another task's pod


def test_every_cluster_unreachable_retries_with_backoff_then_gives_up(seed_fleet, cap, snap):
    down = snap(cap("rise", reachable=False), cap("bair", reachable=False))
    state, _ = step(make(seed_fleet, placement_retry_seconds=3), Start(), T0)
    state, actions = step(state, Probed(down), T0)
    assert kinds(actions) == [] and state.wake_at == T0 + 0.2
    state, actions = step(state, Tick(), T0 + 0.2)
    assert kinds(actions) == [Probe]
    state, _ = step(state, Probed(down), T0 + 0.2)
    assert state.wake_at == pytest.approx(T0 + 0.6)  # doubled
    state, actions = step(state, Probed(down), T0 + 3.5)
    assert state.verdict.status is Status.NO_PLACEMENT
    assert "unreachable" in state.verdict.message and kinds(actions) == [Finish]


def test_nothing_fits_and_nothing_is_down_fails_at_once(seed_fleet, cap, snap):
    state, _ = step(make(seed_fleet), Start(), T0)
    state, _actions = step(state, Probed(snap(cap("rise", (1, 0)), cap("bair", (1, 0)))), T0)
    assert state.verdict.status is Status.NO_PLACEMENT
    assert "largest T4 node" in state.verdict.message


# -- watching: verdicts ----------------------------------------------------------------------
def test_success_recorded(seed_fleet, free, pod_fixture):
    state, actions = feed(placed(seed_fleet, free), events_of(pod_fixture, "succeeded"), T0 + 1)
    assert state.verdict.status is Status.SUCCESS and the(actions, Finish)
    last = state.timeline.last
    assert last.outcome == Kind.SUCCEEDED.value and last.started_at and last.ended_at
    assert last.started_at <= last.ended_at


def test_failure_recorded_with_the_exit_code(seed_fleet, free, pod_fixture):
    state, _ = feed(placed(seed_fleet, free), events_of(pod_fixture, "failed"), T0 + 1)
    assert state.verdict.status is Status.FAILED
    assert state.timeline.last.exit_code not in (None, 0)
    assert "exit code" in state.verdict.message


def test_a_permanent_waiting_reason_fails_at_once(seed_fleet, free, pod_fixture):
    pod = pod_fixture("running")["events"][1]["object"]
    pod = {**pod, "status": {"phase": "Pending", "containerStatuses": [
        {"name": "base", "state": {"waiting": {"reason": "InvalidImageName", "message": "bad"}}}]}}
    state, _ = step(placed(seed_fleet, free), PodSeen(pod), T0 + 1)
    assert state.verdict.status is Status.FAILED and "InvalidImageName" in state.verdict.message


def test_running_is_followed_not_concluded(seed_fleet, free, pod_fixture):
    state, actions = feed(placed(seed_fleet, free), events_of(pod_fixture, "running"), T0 + 1)
    assert state.phase is Phase.WATCHING and state.verdict is None
    assert state.timeline.last.started_at is not None
    assert any("running on rise" in a.text for a in actions if isinstance(a, Note))


# -- watching: moves -------------------------------------------------------------------------
@pytest.mark.parametrize("fixture", ["kueue_preempted", "scheduler_preempted"])
def test_preempted_work_is_placed_again_elsewhere(seed_fleet, rise_full, free, pod_fixture,
                                                  fixture):
    state = placed(seed_fleet, rise_full)  # borrowed bair
    state, actions = feed(state, events_of(pod_fixture, fixture), T0 + 1)
    assert state.phase is Phase.PLACING and kinds(actions) == [Claim]  # claimed before placed
    assert state.timeline.last.outcome == Kind.PREEMPTED.value
    assert state.timeline.last.preempted_by.startswith(("kueue", "kube-scheduler"))
    state, actions = moved(state, free, T0 + 2)
    assert the(actions, Create).cluster == "rise"  # bair preempted it: cooldown
    assert the(actions, Create).pod["metadata"]["name"] == IDENTITY.pod_name(2)
    state, actions = step(state, Created("rise"), T0 + 2.05)
    assert state.phase is Phase.WATCHING and state.timeline.last.number == 2
    assert state.latencies and state.latencies[0] == pytest.approx(
        T0 + 2.05 - state.timeline.attempts[0].ended_at)  # the wait for the pod's end included


def test_kueue_preemptor_is_named_after_the_replacement_exists(seed_fleet, rise_full, free,
                                                              pod_fixture):
    state = placed(seed_fleet, rise_full)
    state, _ = feed(state, events_of(pod_fixture, "kueue_preempted"), T0 + 1)
    state, _ = moved(state, free, T0 + 2)
    state, actions = step(state, Created("rise"), T0 + 2)
    assert kinds(actions).index(Watch) < kinds(actions).index(NamePreemptor)
    name = the(actions, NamePreemptor)
    assert (name.cluster, name.attempt) == ("bair", 0) and name.uid
    state, _ = step(state, PreemptorNamed(0, "bair_user/abbeel/r via kueue"), T0 + 3)
    assert state.timeline.attempts[0].preempted_by == "bair_user/abbeel/r via kueue"


def test_a_pod_deleted_under_the_task_is_lost_and_moves(seed_fleet, free, pod_fixture):
    running = events_of(pod_fixture, "running")
    state, _ = feed(placed(seed_fleet, free), running, T0 + 1)
    state, actions = step(state, PodSeen(running[-1].pod, deleted=True), T0 + 5)
    assert state.timeline.last.outcome == Kind.LOST.value
    assert state.timeline.last.reason == Reason.DELETED.value
    assert state.phase is Phase.PLACING and kinds(actions) == [Claim]  # claimed before placed


def test_a_pod_missing_from_a_relist_after_410_is_lost_and_moves(seed_fleet, free, pod_fixture):
    running = events_of(pod_fixture, "running")
    state, _ = feed(placed(seed_fleet, free), running, T0 + 1)
    state, actions = step(state, PodGone(), T0 + 5)
    assert kinds(actions) == [Inquire]  # its end was not seen: the Events may say
    state, actions = step(state, Inquired(None), T0 + 5)
    assert state.timeline.last.outcome == Kind.LOST.value
    assert state.phase is Phase.PLACING and kinds(actions) == [Claim]  # claimed before placed


def test_a_pod_never_seen_and_gone_is_lost(seed_fleet, free):
    state, actions = step(placed(seed_fleet, free), PodGone(), T0 + 1)
    assert the(actions, Inquire).pod == IDENTITY.pod_name(1)
    state, _ = step(state, Inquired(None), T0 + 1)
    assert state.timeline.last.reason == Reason.NOT_FOUND.value and state.phase is Phase.PLACING


def test_max_preemptions_ends_the_task(seed_fleet, rise_full, pod_fixture):
    state = placed(seed_fleet, rise_full, max_preemptions=1)
    preempted = events_of(pod_fixture, "kueue_preempted")
    state, _ = feed(state, preempted, T0 + 1)
    assert state.phase is Phase.PLACING  # 1 move: allowed
    state, actions = moved(state, rise_full, T0 + 2)
    state, _ = step(state, Created(the(actions, Create).cluster), T0 + 2)
    state, actions = feed(state, preempted, T0 + 3)
    assert state.verdict.status is Status.PREEMPTION_LIMIT
    assert "moved 2 times, more than max_preemptions=1" in state.verdict.message


def test_max_preemptions_zero_fails_on_the_first_move(seed_fleet, rise_full, pod_fixture):
    state = placed(seed_fleet, rise_full, max_preemptions=0)
    state, _ = feed(state, events_of(pod_fixture, "kueue_preempted"), T0 + 1)
    assert state.verdict.status is Status.PREEMPTION_LIMIT


# -- unreachable -----------------------------------------------------------------------------
def test_unreachable_within_the_grace_keeps_following(seed_fleet, free, pod_fixture):
    state, _ = feed(placed(seed_fleet, free, unreachable_grace=30),
                    events_of(pod_fixture, "running"), T0 + 1)
    state, actions = step(state, Unreachable("connection refused"), T0 + 10)
    assert state.down_since == T0 + 10
    assert state.wake_at == pytest.approx(T0 + 10.1)  # housekeeping first: 10 s after placing
    state, actions = step(state, Tick(), T0 + 35)
    assert state.wake_at == T0 + 40  # the end of the grace
    state, actions = step(state, Tick(), T0 + 39.9)
    assert state.phase is Phase.WATCHING and Probe not in kinds(actions)
    state, _ = step(state, Reconnected(), T0 + 39.95)
    state, _ = step(state, Tick(), T0 + 45)
    assert state.phase is Phase.WATCHING and state.down_since is None


def test_unreachable_past_the_grace_moves_and_orphans_the_pod(seed_fleet, free, pod_fixture):
    state, _ = feed(placed(seed_fleet, free, unreachable_grace=30),
                    events_of(pod_fixture, "running"), T0 + 1)
    state, _ = step(state, Unreachable("connection refused"), T0 + 10)
    state, actions = step(state, Tick(), T0 + 40)
    assert state.phase is Phase.PLACING and kinds(actions) == [Claim]  # claimed before placed
    assert state.timeline.last.reason == Reason.CLUSTER_UNREACHABLE.value
    assert state.orphans == (Orphan("rise", "skyshare-rise", IDENTITY.pod_name(1)),)


def test_unreachable_past_the_grace_fails_when_configured_to(seed_fleet, free, pod_fixture):
    state, _ = feed(placed(seed_fleet, free, unreachable_grace=30,
                           on_unreachable=OnUnreachable.FAIL),
                    events_of(pod_fixture, "running"), T0 + 1)
    state, _ = step(state, Unreachable("connection refused"), T0 + 10)
    state, _ = step(state, Tick(), T0 + 40)
    assert state.verdict.status is Status.UNREACHABLE


def test_a_pod_event_ends_the_unreachable_spell(seed_fleet, free, pod_fixture):
    running = events_of(pod_fixture, "running")
    state, _ = feed(placed(seed_fleet, free), running, T0 + 1)
    state, _ = step(state, Unreachable("x"), T0 + 10)
    state, _ = step(state, running[-1], T0 + 12)
    assert state.down_since is None
    state, _ = step(state, Tick(), T0 + 100)
    assert state.phase is Phase.WATCHING


# -- queued attempts: rebalance and queue timeout --------------------------------------------
def gated(pod_fixture) -> PodSeen:
    return events_of(pod_fixture, "pending_gated")[0]


def test_a_queued_attempt_moves_when_another_cluster_is_free_now(seed_fleet, cap, snap,
                                                                 pod_fixture):
    both_full = snap(cap("rise", (2, 2)), cap("bair", (2, 2)))
    state = placed(seed_fleet, both_full, rebalance_after=5)  # queued on rise (owner)
    state, _ = step(state, gated(pod_fixture), T0 + 1)
    assert state.wake_at == pytest.approx(T0 + 5.1)
    state, actions = step(state, Tick(), T0 + 5.1)
    assert the(actions, Probe).shared is True
    state, actions = step(state, Probed(snap(cap("rise", (2, 2)), cap("bair", (2, 0))), True),
                          T0 + 5.2)
    assert kinds(actions) == [Recheck]
    state, actions = step(state, gated(pod_fixture), T0 + 5.3)  # still queued
    assert state.timeline.last.outcome == Kind.MOVED.value
    assert the(actions, Delete).orphan.pod == IDENTITY.pod_name(1)
    assert state.phase is Phase.PLACING and Claim in kinds(actions)
    assert state.timeline.moves == 0  # a rebalance is not a preemption


def test_a_queued_attempt_admitted_meanwhile_stays(seed_fleet, cap, snap, pod_fixture):
    both_full = snap(cap("rise", (2, 2)), cap("bair", (2, 2)))
    state = placed(seed_fleet, both_full, rebalance_after=5)
    state, _ = step(state, gated(pod_fixture), T0 + 1)
    state, _ = step(state, Tick(), T0 + 5.1)
    state, _ = step(state, Probed(snap(cap("rise", (2, 2)), cap("bair", (2, 0))), True),
                    T0 + 5.2)
    state, actions = step(state, events_of(pod_fixture, "running")[-1], T0 + 5.3)
    assert state.phase is Phase.WATCHING and state.rebalance_to is None
    assert kinds(actions) == []


def test_a_rebalance_recheck_without_an_answer_is_asked_again_later(seed_fleet, cap, snap,
                                                                    pod_fixture):
    both_full = snap(cap("rise", (2, 2)), cap("bair", (2, 2)))
    state = placed(seed_fleet, both_full, rebalance_after=5)
    state, _ = step(state, gated(pod_fixture), T0 + 1)
    state, _ = step(state, Probed(snap(cap("rise", (2, 2)), cap("bair", (2, 0))), True),
                    T0 + 5.2)
    assert state.rebalance_to is not None
    state, _ = step(state, Unreachable("timed out"), T0 + 5.3)
    state, _ = step(state, Reconnected(), T0 + 6)
    state, actions = step(state, Tick(), T0 + 11)
    assert the(actions, Probe).shared is True


def test_no_rebalance_when_nothing_better_is_free(seed_fleet, cap, snap, pod_fixture):
    both_full = snap(cap("rise", (2, 2)), cap("bair", (2, 2)))
    state = placed(seed_fleet, both_full, rebalance_after=5)
    state, _ = step(state, gated(pod_fixture), T0 + 1)
    state, actions = step(state, Probed(both_full, True), T0 + 5.2)
    assert kinds(actions) == [] and state.rebalance_to is None


def test_queue_timeout_ends_the_task(seed_fleet, cap, snap, pod_fixture):
    both_full = snap(cap("rise", (2, 2)), cap("bair", (2, 2)))
    state = placed(seed_fleet, both_full, queue_timeout=60, rebalance_after=0)
    state, _ = step(state, gated(pod_fixture), T0 + 1)
    assert state.wake_at == pytest.approx(T0 + 0.1 + 60.001)
    state, _ = step(state, Tick(), T0 + 30)
    assert state.phase is Phase.WATCHING
    state, _actions = step(state, Tick(), T0 + 61)
    assert state.verdict.status is Status.QUEUE_TIMEOUT
    assert "more than queue_timeout=60s" in state.verdict.message


def test_a_started_attempt_never_times_out_in_the_queue(seed_fleet, free, pod_fixture):
    state = placed(seed_fleet, free, queue_timeout=60)
    state, _ = feed(state, events_of(pod_fixture, "running"), T0 + 1)
    state, _ = step(state, Tick(), T0 + 600)
    assert state.phase is Phase.WATCHING


# -- the rest --------------------------------------------------------------------------------
def test_housekeeping_wakes_within_ten_seconds(seed_fleet, free, pod_fixture):
    state, _ = feed(placed(seed_fleet, free), events_of(pod_fixture, "running"), T0 + 1)
    assert wake_at(state, T0 + 5) == state.housekeeping_at == pytest.approx(T0 + 10.1)
    assert wake_at(state, T0 + 100) == pytest.approx(T0 + 100.05)  # overdue: at once


def test_done_ignores_everything(seed_fleet, free, pod_fixture):
    state, _ = feed(placed(seed_fleet, free), events_of(pod_fixture, "succeeded"), T0 + 1)
    for event in (Tick(), PodGone(), Unreachable("x"), Created("rise")):
        assert step(state, event, T0 + 9) == (state, [])


def test_state_round_trips_through_json(seed_fleet, free, pod_fixture):
    import json

    state, _ = feed(placed(seed_fleet, free, queue_timeout=9.0,
                           on_unreachable=OnUnreachable.FAIL),
                    events_of(pod_fixture, "running"), T0 + 1)
    state = replace(state, orphans=(Orphan("bair", "skyshare-rise", "p"),))
    saved = json.loads(json.dumps(state.to_dict()))
    assert saved["fleet"] == {"source": seed_fleet.source, "digest": seed_fleet.digest}
    again = Follow.from_dict(saved, seed_fleet)
    assert again.job == state.job and again.timeline == state.timeline
    assert again.orphans == state.orphans


def test_an_old_trigger_state_with_min_event_delay_still_loads(seed_fleet, free):
    data = placed(seed_fleet, free).to_dict()
    data["settings"]["min_event_delay"] = 15.0
    assert Follow.from_dict(data, seed_fleet).job.settings == Settings()


# -- the claim on the next attempt (two followers of one task) -------------------------------
def preempted(seed_fleet, rise_full, pod_fixture, **settings: Any) -> Follow:
    """Attempt 1 borrowed bair and was preempted there; its pod is gone: placing attempt 2."""
    state = placed(seed_fleet, rise_full, **settings)
    state, _ = feed(state, events_of(pod_fixture, "kueue_preempted"), T0 + 1)
    assert state.phase is Phase.PLACING
    return state


def taken(state: Follow, holder: str, successor=None, renewed: float = T0,
          history=None) -> ClaimAnswer:
    last = state.timeline.last
    body = claims.lease(namespace="skyshare-rise", name=last.pod, task_key=IDENTITY.key,
                        try_number=1, attempt=last.number + 1, holder=holder, now=renewed,
                        history=history or state.timeline, successor=successor,
                        resource_version="3")
    return ClaimAnswer(ClaimResult.TAKEN, claims.read(last.cluster, body))


def test_a_move_claims_the_next_attempt_before_it_probes(seed_fleet, rise_full, free,
                                                         pod_fixture):
    state = replace(placed(seed_fleet, rise_full), me="me")
    state, actions = feed(state, events_of(pod_fixture, "kueue_preempted"), T0 + 1)
    claim = the(actions, Claim)
    assert Probe not in kinds(actions) and Create not in kinds(actions)
    assert claim.fences == ("bair",) and claim.held is None and not claim.record
    assert claim.lease["metadata"]["name"] == IDENTITY.pod_name(1)
    assert claim.lease["spec"]["holderIdentity"] == "me"
    assert claim.lease["metadata"]["labels"][L_ATTEMPT] == "2"
    state, actions = moved(state, free, T0 + 2)
    assert the(actions, Create).pod["metadata"]["name"] == IDENTITY.pod_name(2)
    assert state.held.resource_version == "7" and state.claimed_at == T0 + 2


def test_only_a_lost_clusters_claim_may_fall_back_to_another_cluster(seed_fleet, free,
                                                                      pod_fixture):
    state, _ = feed(placed(seed_fleet, free, unreachable_grace=30),
                    events_of(pod_fixture, "running"), T0 + 1)
    state, _ = step(state, Unreachable("connection refused"), T0 + 10)
    state, actions = step(state, Tick(), T0 + 40)
    assert the(actions, Claim).fences == ("rise", "bair")


def test_the_created_attempt_is_named_on_the_claim_with_its_version(seed_fleet, rise_full, free,
                                                                   pod_fixture):
    state = preempted(seed_fleet, rise_full, pod_fixture)
    state, _ = moved(state, free, T0 + 2)
    state, actions = step(state, Created("rise"), T0 + 2.1)
    record = the(actions, Claim)
    assert record.record and record.held == state.held and state.unrecorded == record
    assert kinds(actions).index(Claim) < kinds(actions).index(Watch)  # losers learn first
    found = claims.read("bair", {**record.lease, "metadata": {**record.lease["metadata"],
                                                             "resourceVersion": "8"}})
    assert (found.successor.number, found.successor.cluster) == (2, "rise")
    assert [a.number for a in found.history.attempts] == [1]
    state, _ = step(state, ClaimAnswer(ClaimResult.WON, found, record=True), T0 + 2.2)
    assert state.unrecorded is None


def test_naming_the_attempt_is_retried_until_answered_even_across_a_move(
        seed_fleet, rise_full, free, pod_fixture):
    state = preempted(seed_fleet, rise_full, pod_fixture)
    state, _ = moved(state, free, T0 + 2)
    state, _ = step(state, Created("rise"), T0 + 2.1)
    record = state.unrecorded
    state, actions = step(state, ClaimAnswer(ClaimResult.NO_ANSWER, detail="timeout",
                                             record=True), T0 + 3)
    assert state.unrecorded == record and "trying again" in the(actions, Note).text
    state, actions = step(state, Tick(), state.wake_at)
    assert the(actions, Claim) == record
    # attempt 2 is taken before the record got through: the record goes on being retried
    state, actions = step(state, PodSeen(events_of(pod_fixture, "running")[-1].pod,
                                         deleted=True), T0 + 20)
    assert record in actions and state.unrecorded == record


def test_a_loser_waits_then_takes_over_a_claim_unchanged_for_its_duration_on_its_own_clock(
        seed_fleet, rise_full, pod_fixture):
    state = preempted(seed_fleet, rise_full, pod_fixture)
    far_future = T0 + 10_000  # the holder's clock says it renewed just now: skew is ignored
    state, actions = step(state, taken(state, "dead", renewed=far_future), T0 + 2)
    assert kinds(actions) == [] and state.claim_wait
    state, actions = step(state, Tick(), state.wake_at)
    assert kinds(actions) == [Claim]  # read again (a create that meets the Lease: 409)
    state, actions = step(state, taken(state, "dead", renewed=far_future), T0 + 2.6)
    assert actions == []  # said once
    late = T0 + 2 + claims.CLAIM_SECONDS + 0.1
    state, actions = step(state, taken(state, "dead", renewed=far_future), late)
    claim = the(actions, Claim)
    assert claim.held.resource_version == "3" and claim.held.cluster == "bair"
    assert claim.lease["metadata"]["resourceVersion"] == "3"  # the precondition
    assert "taking it over" in the(actions, Note).text


def test_a_claim_that_changes_is_not_taken_over(seed_fleet, rise_full, pod_fixture):
    state = preempted(seed_fleet, rise_full, pod_fixture)
    state, _ = step(state, taken(state, "alive"), T0 + 2)
    renewed = taken(state, "alive")
    renewed = replace(renewed, found=replace(renewed.found, held=replace(
        renewed.found.held, resource_version="4")))
    state, actions = step(state, renewed, T0 + 2 + claims.CLAIM_SECONDS + 1)
    assert kinds(actions) == [] and state.seen_claim[0] == "4"


def test_a_deleted_claim_means_the_task_ended_elsewhere(seed_fleet, rise_full, pod_fixture):
    state = preempted(seed_fleet, rise_full, pod_fixture)
    state, actions = step(state, ClaimAnswer(ClaimResult.GONE), T0 + 2)
    assert state.verdict.status is Status.ABANDONED and Create not in kinds(actions)


def tombstone(answer: ClaimAnswer, verdict: str = "success") -> ClaimAnswer:
    body = claims.entombed({"metadata": {"name": answer.found.held.name, "resourceVersion": "9",
                                         "labels": {}}}, verdict=verdict, holder="A", now=T0)
    return replace(answer, found=replace(answer.found, verdict=claims.read("x", body).verdict,
                                         holder="A"))


@pytest.mark.parametrize("named", [False, True], ids=["no-successor", "successor-named"])
def test_a_claim_that_is_a_tombstone_ends_the_follower_and_creates_nothing(
        seed_fleet, rise_full, pod_fixture, named):
    """A frozen follower woken after the task's verdict: even a successor named on the
    tombstone is not followed (its pod is deleted by the finisher, which would read as lost)."""
    state = preempted(seed_fleet, rise_full, pod_fixture)
    succ = Attempt(2, "rise", "owner", IDENTITY.pod_name(2), "skyshare-rise", 0.0) if named \
        else None
    state, actions = step(state, tombstone(taken(state, "A", successor=succ)), T0 + 2)
    # the finisher's verdict is reported: Airflow may still wait for it (its event was lost)
    assert state.verdict.status is Status.SUCCESS and state.phase is Phase.DONE
    assert not {Create, Probe, Claim, Watch, Delete} & set(kinds(actions))
    assert "tombstone" in state.verdict.message and "success" in state.verdict.message
    assert [a.number for a in state.timeline.attempts] == ([1, 2] if named else [1])


@pytest.mark.parametrize("verdict", [claims.KILLED, "error", "a-future-verdict"])
def test_a_tombstone_of_a_killed_task_ends_the_follower_as_abandoned(
        seed_fleet, rise_full, pod_fixture, verdict):
    state = preempted(seed_fleet, rise_full, pod_fixture)
    state, actions = step(state, tombstone(taken(state, "A"), verdict=verdict), T0 + 2)
    assert state.verdict.status is Status.ABANDONED
    assert not {Create, Probe, Claim, Watch, Delete} & set(kinds(actions))


def test_a_record_that_meets_a_tombstone_deletes_the_attempt_just_created(
        seed_fleet, rise_full, free, pod_fixture):
    """Killed elsewhere while this follower created attempt 2: that pod is nobody's."""
    state = preempted(seed_fleet, rise_full, pod_fixture)
    state, _ = moved(state, free, T0 + 2)
    state, actions = step(state, Created("rise"), T0 + 2.1)
    answer = replace(tombstone(taken(replace(state, timeline=Timeline(
        state.timeline.attempts[:-1])), "A"), verdict=claims.KILLED), record=True)
    state, actions = step(state, answer, T0 + 2.2)
    assert state.verdict.status is Status.ABANDONED and state.unrecorded is None
    assert the(actions, Delete).orphan == Orphan("rise", "skyshare-rise", IDENTITY.pod_name(2))


def test_no_fence_cluster_answering_retries_the_claim(seed_fleet, rise_full, pod_fixture):
    state = preempted(seed_fleet, rise_full, pod_fixture)
    state, actions = step(state, ClaimAnswer(ClaimResult.NO_ANSWER, detail="refused"), T0 + 2)
    assert Create not in kinds(actions) and state.phase is Phase.PLACING
    state, actions = step(state, Tick(), state.wake_at)
    assert kinds(actions) == [Claim]


def test_a_stale_claim_is_renewed_before_the_next_candidates_create(seed_fleet, free,
                                                                    pod_fixture):
    running = events_of(pod_fixture, "running")
    state, _ = feed(placed(seed_fleet, free), running, T0 + 1)
    state, _ = step(state, PodSeen(running[-1].pod, deleted=True), T0 + 5)  # lost: no cooldown
    state, actions = moved(state, free, T0 + 6)
    first = the(actions, Create).cluster
    late = T0 + 6 + CLAIM_FRESH_SECONDS + 1
    state, actions = step(state, CreateFailed(first, CreateAnswer.REFUSED, "HTTP 403"), late)
    assert Create not in kinds(actions) and the(actions, Claim).held == state.held
    state, actions = won(state, actions, late)
    assert the(actions, Create).cluster != first


def test_a_loser_follows_the_winners_attempt_and_creates_nothing(seed_fleet, rise_full, free,
                                                                 pod_fixture):
    state = preempted(seed_fleet, rise_full, pod_fixture)
    state, _ = step(state, Probed(free), T0 + 2)
    theirs = Attempt(number=2, cluster="rise", tier="owner", pod=IDENTITY.pod_name(2),
                     namespace="skyshare-rise", placed_at=T0 + 1.5, why="theirs")
    state, actions = step(state, taken(state, "other", theirs), T0 + 2)
    assert kinds(actions) == [Watch] and the(actions, Watch).cluster == "rise"
    assert state.phase is Phase.WATCHING and state.timeline.last == theirs
    assert state.latencies == ()  # not this follower's move
    assert "by another follower (other)" in the(actions, Note).text


def test_a_loser_never_keeps_the_attempt_it_follows_as_an_orphan(seed_fleet, rise_full,
                                                                pod_fixture):
    """Its own create of that name on that cluster had no answer before it lost the claim:
    the pod there is the winner's now, never to be deleted by housekeeping."""
    state = preempted(seed_fleet, rise_full, pod_fixture)
    mine = Orphan("rise", "skyshare-rise", IDENTITY.pod_name(2))
    state = replace(state, orphans=(mine, Orphan("bair", "skyshare-rise", "older")))
    theirs = Attempt(number=2, cluster="rise", tier="owner", pod=IDENTITY.pod_name(2),
                     namespace="skyshare-rise", placed_at=T0 + 1.5)
    state, _ = step(state, taken(state, "other", theirs), T0 + 2)
    assert mine not in state.orphans and len(state.orphans) == 1
    state, actions = step(state, Tick(), state.wake_at + 20)
    assert [a.orphan.pod for a in actions if isinstance(a, Delete)] == ["older"]


def test_the_winners_timeline_replaces_an_older_one(seed_fleet, rise_full, free, pod_fixture):
    """A follower restarted from the deferral's timeline learns the attempts it never saw."""
    state = preempted(seed_fleet, rise_full, pod_fixture)
    state, _ = step(state, Probed(free), T0 + 2)
    longer = state.timeline.update_last(reason="as the winner saw it")
    theirs = Attempt(number=2, cluster="rise", tier="owner", pod=IDENTITY.pod_name(2),
                     namespace="skyshare-rise", placed_at=T0 + 1.5)
    state, _ = step(state, taken(state, "other", theirs, history=longer), T0 + 2)
    assert state.timeline.attempts[0].reason == "as the winner saw it"


def test_a_first_attempt_is_created_without_a_claim(seed_fleet, free):
    state, _ = step(make(seed_fleet), Start(), T0)
    state, actions = step(state, Probed(free), T0)
    assert Claim not in kinds(actions) and Create in kinds(actions)


# -- waiting for the taken pod to stop (wait_for_termination) --------------------------------
def stopping(pod_fixture) -> tuple[list[PodSeen], PodSeen]:
    """Kueue's preemption up to the pod being deleted, and its DELETED."""
    events = events_of(pod_fixture, "kueue_preempted")
    return events[:-1], events[-1]


def test_the_replacement_waits_for_the_preempted_pod_to_be_gone(seed_fleet, rise_full, free,
                                                                 pod_fixture):
    before, gone = stopping(pod_fixture)
    state, actions = feed(placed(seed_fleet, rise_full), before, T0 + 1)
    assert state.phase is Phase.DRAINING and Probe not in kinds(actions)
    assert state.timeline.last.outcome == Kind.PREEMPTED.value  # recorded when seen
    state, actions = step(state, gone, T0 + 3)
    assert state.phase is Phase.PLACING and kinds(actions) == [Claim]  # claimed before placed
    assert "waited on for" in actions[0].text
    state, _ = moved(state, free, T0 + 3)
    state, _ = step(state, Created("rise"), T0 + 3.5)
    assert state.latencies[0] == pytest.approx(2.5 - 0.05, abs=0.06)  # the wait is counted


def test_the_wait_ends_with_the_grace_period(seed_fleet, rise_full, pod_fixture):
    before, _ = stopping(pod_fixture)
    state, _ = feed(placed(seed_fleet, rise_full), before[:6], T0 + 1)  # condition only
    assert state.phase is Phase.DRAINING
    assert state.drain_until == pytest.approx(T0 + 1.05 + 30 + TERMINATION_MARGIN)
    state, actions = step(state, Tick(), state.drain_until - 0.01)
    assert state.phase is Phase.DRAINING and actions == []
    state, actions = step(state, Tick(), state.drain_until)
    assert state.phase is Phase.PLACING and "grace period is over" in actions[0].text


def test_no_wait_when_turned_off_or_when_the_pod_never_started(seed_fleet, rise_full, pod_fixture):
    before, _ = stopping(pod_fixture)
    state, _ = feed(placed(seed_fleet, rise_full, wait_for_termination=False), before, T0 + 1)
    assert state.phase is Phase.PLACING
    condition = before[5].pod
    never_ran = {**condition, "status": {**condition["status"], "phase": "Pending",
                                         "containerStatuses": []}}
    state, _ = step(placed(seed_fleet, rise_full), PodSeen(never_ran), T0 + 1)
    assert state.phase is Phase.PLACING


def test_a_lost_cluster_is_not_waited_for(seed_fleet, free, pod_fixture):
    state, _ = feed(placed(seed_fleet, free, unreachable_grace=30),
                    events_of(pod_fixture, "running"), T0 + 1)
    state, _ = step(state, Unreachable("refused"), T0 + 10)
    state, _ = step(state, Tick(), T0 + 40)
    assert state.phase is Phase.PLACING


# -- a pod gone while no follower ran: its Events say how it ended ---------------------------
def test_a_preemption_seen_only_in_the_events_is_recorded_counted_and_named(
        seed_fleet, rise_full, free):
    state, actions = step(placed(seed_fleet, rise_full), PodGone(), T0 + 100)
    inquire = the(actions, Inquire)
    assert (inquire.cluster, inquire.pod) == ("bair", IDENTITY.pod_name(1))
    outcome = Outcome(Kind.PREEMPTED, "WorkloadEvictedDueToPreempted",
                      "Preempted to accommodate a workload (UID: w, JobUID: 1234abcd-9) due to "
                      "reclamation within the cohort", by="kueue", preemptor="1234abcd-9")
    state, _ = step(state, Inquired(outcome), T0 + 100)
    first = state.timeline.last
    assert first.outcome == Kind.PREEMPTED.value and state.timeline.preemptions == 1
    assert first.preempted_by == "kueue (reclamation within the cohort)"
    state, _ = moved(state, free, T0 + 101)
    state, actions = step(state, Created("rise"), T0 + 101)
    assert the(actions, NamePreemptor).uid == "1234abcd-9"
    assert state.timeline.last.number == 2


def test_housekeeping_is_not_put_off_by_a_busy_pod(seed_fleet, free, pod_fixture):
    """Orphans are deleted every HOUSEKEEPING_SECONDS even when pod events come faster."""
    running = events_of(pod_fixture, "running")[-1]
    state = replace(placed(seed_fleet, free), orphans=(Orphan("bair", "skyshare-rise", "x"),))
    for second in range(1, 10):
        state, _ = step(state, running, T0 + second)
        assert state.wake_at == pytest.approx(T0 + 10.1)
    state, actions = step(state, Tick(), T0 + 10.1)
    assert kinds(actions) == [Delete] and state.wake_at == pytest.approx(T0 + 20.1)
