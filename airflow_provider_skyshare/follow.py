"""Following one task across clusters, as a pure state machine: ``step(state, event, now)``.

Every decision of the follow loop is here: place, fall through to the next candidate, adopt,
classify what the watch saw, move preempted or lost work, rebalance a queued attempt, time
out, give up. ``step`` reads no clock, no file and no cluster: the shell
(``supervisor.Supervisor``) feeds it typed events (what a watch, a probe or a create
returned, or a timer) and executes the typed actions it returns. That makes every path
unit-testable with recorded pods, and the shell a loop with no decisions in it.

The shape follows Kueue's ``pkg/scheduler/preemption``: one rule per function, named reasons
(``names.Reason``), side effects as values the caller executes.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from airflow_provider_skyshare import claims, gang, outcomes, placement, pods
from airflow_provider_skyshare.claims import Held
from airflow_provider_skyshare.fleet import Fleet
from airflow_provider_skyshare.names import L_TASK_KEY, TERMINAL_PHASES, Kind, Reason
from airflow_provider_skyshare.outcomes import Outcome, observed
from airflow_provider_skyshare.placement import Candidate, PlacementError, Request
from airflow_provider_skyshare.pods import TaskIdentity
from airflow_provider_skyshare.snapshot import Snapshot
from airflow_provider_skyshare.timeline import Attempt, Timeline, epoch

HOUSEKEEPING_SECONDS = 10.0  # wake this often to delete orphans and check the queue timeout
FIRST_RETRY_DELAY = 0.2  # placement retry back-off while every cluster is unreachable
MAX_RETRY_DELAY = 2.0
CLAIM_POLL_SECONDS = 0.5  # look again this often while another follower creates the attempt
# A claim written this recently is used for a create without renewing it first (it expires
# after claims.CLAIM_SECONDS): the common move costs one Lease write, not two.
CLAIM_FRESH_SECONDS = 15.0
TERMINATION_MARGIN = 5.0  # after a pod's grace period, before placing without its DELETED
DEFAULT_GRACE_SECONDS = 30.0  # Kubernetes' terminationGracePeriodSeconds default


class OnUnreachable(str, enum.Enum):
    MOVE = "move"
    FAIL = "fail"


@dataclass(frozen=True)
class Settings:
    max_preemptions: int = 5
    queue_timeout: float | None = None  # seconds an attempt may stay queued
    unreachable_grace: float = 30.0  # seconds a cluster may be unreachable before moving
    on_unreachable: OnUnreachable = OnUnreachable.MOVE
    placement_retry_seconds: float = 30.0  # keep retrying when every cluster is unreachable
    rebalance_after: float = 5.0  # a queued attempt moves when another cluster is free now
    # Create a preempted attempt's replacement only once the old pod is gone (or its grace
    # period is over): two copies never write one checkpoint.
    wait_for_termination: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "on_unreachable": self.on_unreachable.value}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settings:
        """Unknown keys are ignored: a trigger serialised by an older version (which had
        ``min_event_delay``) still loads after an upgrade."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "on_unreachable" in values:
            values["on_unreachable"] = OnUnreachable(values["on_unreachable"])
        return cls(**values)


class Status(str, enum.Enum):
    """The task's verdict."""

    SUCCESS = "success"
    FAILED = "failed"  # the job's own failure
    QUEUE_TIMEOUT = "queue_timeout"
    UNREACHABLE = "unreachable"  # on_unreachable="fail"
    PREEMPTION_LIMIT = "preemption_limit"
    NO_PLACEMENT = "no_placement"
    ABANDONED = "abandoned"  # Airflow ended the task before its trigger ran
    ERROR = "error"  # a bug or an unexpected answer: the trigger failed

    @property
    def pod_finished(self) -> bool:
        """The pod ran to its own end (its log is worth showing, on_finish_action applies)."""
        return self in (Status.SUCCESS, Status.FAILED)


@dataclass(frozen=True)
class Verdict:
    status: Status
    message: str
    outcome: Outcome | None = None


@dataclass(frozen=True)
class Orphan:
    """A pod of this task that must go once its cluster answers (unreachable when it should
    have been deleted, or a create whose answer was lost)."""

    cluster: str
    namespace: str
    pod: str


class Refusal(str, enum.Enum):
    """Why a cluster did not take this attempt's pod."""

    UNREACHABLE = "unreachable"  # no answer, not even to the read-back: the pod may exist
    # No (or a 5xx) answer, and the read-back found no pod: the request may still be in the
    # API server, so the name is kept as an orphan too (deleted if it ever appears).
    NOT_CREATED = "not created"
    REJECTED = "rejected"  # the API server said no (HTTP status in the message)
    NAME_TAKEN = "name taken"  # an object of another task holds the deterministic name

    @property
    def transient(self) -> bool:
        """Worth another round: the cluster may take the pod a moment later."""
        return self in (Refusal.UNREACHABLE, Refusal.NOT_CREATED)


class CreateAnswer(str, enum.Enum):
    """What a pod create got back, when it was not the pod."""

    NONE = "no answer"  # timeout, reset: the API server may have stored the pod
    SERVER_ERROR = "server error"  # HTTP 5xx: it may have stored it too (an etcd timeout)
    REFUSED = "refused"  # HTTP 4xx: it did not

    @property
    def ambiguous(self) -> bool:
        return self is not CreateAnswer.REFUSED


@dataclass(frozen=True)
class Job:
    """What is being followed; fixed for the task's try."""

    fleet: Fleet
    request: Request
    template: dict[str, Any]
    identity: TaskIdentity
    settings: Settings

    def __post_init__(self) -> None:
        # Pods are made, followed and deleted in the org's namespace with its credential.
        if self.fleet.view != self.request.org:
            object.__setattr__(self, "fleet", self.fleet.for_org(self.request.org))


# -- events (what happened) ----------------------------------------------------------------
@dataclass(frozen=True)
class Start:
    """Follow from the timeline as it is: place attempt 1, or watch the newest attempt (even
    one recorded as ended: its pod tells again how it ended; the work never runs twice)."""


@dataclass(frozen=True)
class Probed:
    snapshot: Snapshot
    shared: bool = False  # a shared probe answers "should a queued attempt move?"
    asked: tuple[str, ...] = ()  # the Probe's clusters (() = every cluster)


@dataclass(frozen=True)
class Created:
    cluster: str


@dataclass(frozen=True)
class CreateConflict:
    """HTTP 409: an object has the name already; ``existing`` is it (None: gone again)."""

    cluster: str
    existing: dict[str, Any] | None


@dataclass(frozen=True)
class CreateFailed:
    cluster: str
    answer: CreateAnswer
    message: str


@dataclass(frozen=True)
class PodSeen:
    pod: dict[str, Any]
    deleted: bool = False


@dataclass(frozen=True)
class PodGone:
    """The pod is not in a fresh list (a relist after 410 Gone, or a get found nothing)."""

    pod: str = ""  # which gang member ("": the attempt's pod)


@dataclass(frozen=True)
class Unreachable:
    detail: str


@dataclass(frozen=True)
class Reconnected:
    pass


@dataclass(frozen=True)
class Tick:
    """The time the state asked to be woken at (``wake_at``) has come."""


@dataclass(frozen=True)
class Deleted:
    orphan: Orphan
    done: bool  # False: the cluster did not answer; try again later


@dataclass(frozen=True)
class PreemptorNamed:
    attempt: int
    who: str


@dataclass(frozen=True)
class ReadBackAnswer:
    """What a get of the pod whose create had no clear answer found."""

    cluster: str
    found: PodSeen | PodGone | Unreachable
    message: str  # the create's own error


class ClaimResult(str, enum.Enum):
    WON = "won"  # this follower may create the attempt (or has recorded it)
    TAKEN = "taken"  # another follower holds the claim
    NO_ANSWER = "no answer"  # no fence cluster answered
    GONE = "gone"  # the Lease was deleted: its tombstone swept, or by hand


@dataclass(frozen=True)
class ClaimAnswer:
    """What a Lease write of ``Claim`` found: ours as written, or the other's as read."""

    result: ClaimResult
    found: claims.Found | None = None
    detail: str = ""
    record: bool = False  # the answer to a record (Claim.record), echoed by the shell


@dataclass(frozen=True)
class Inquired:
    """How a pod that is gone ended, from its cluster's Events (None: they do not say)."""

    outcome: Outcome | None


Event = (Start | Probed | Created | CreateConflict | CreateFailed | PodSeen | PodGone
         | Unreachable | Reconnected | Tick | Deleted | PreemptorNamed | ReadBackAnswer
         | ClaimAnswer | Inquired)


# -- actions (what the shell must do) ------------------------------------------------------
@dataclass(frozen=True)
class Probe:
    shared: bool = False  # placement never shares a probe: it acts on what it sees
    # ask only these clusters (a first placement asks the org's own first); () = every one
    clusters: tuple[str, ...] = ()


@dataclass(frozen=True)
class Create:
    cluster: str
    pod: dict[str, Any]
    # a gang: created after ``pod`` (its leader), on the same cluster: the Service, then the
    # other members. The answer is the leader's, or a failure if any of these failed.
    extra: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Watch:
    """Follow this pod; its first event comes from the watch's cache or one get."""

    cluster: str
    namespace: str
    pod: str
    members: tuple[str, ...] = ()  # a gang: every member's pod (the leader's first)


@dataclass(frozen=True)
class Recheck:
    """Get the current pod now (a rebalance must not move a pod admitted meanwhile)."""

    cluster: str
    namespace: str
    pod: str


@dataclass(frozen=True)
class ReadBack:
    """Get the pod a create may have made despite its error, before any other cluster is
    tried: a task must not end up with a pod on two clusters."""

    cluster: str
    namespace: str
    pod: str
    message: str
    members: tuple[str, ...] = ()  # a gang: found only if every member is


@dataclass(frozen=True)
class Claim:
    """Write the Lease that fences the next attempt (``claims``): create it on the first of
    ``fences`` that answers, or, with ``held``, update that one (its resourceVersion must
    still match). ``lease`` is the body; the shell sets the namespace of the cluster."""

    fences: tuple[str, ...]
    lease: dict[str, Any]
    held: Held | None = None
    record: bool = False  # names the created attempt (its answer is routed apart)


@dataclass(frozen=True)
class Inquire:
    """The pod is gone and this follower did not see how it ended: read its Events (those
    since ``since``: an older pod of the same name is not this one)."""

    cluster: str
    namespace: str
    pod: str
    since: float


@dataclass(frozen=True)
class Delete:
    orphan: Orphan


@dataclass(frozen=True)
class NamePreemptor:
    """Find what took the GPUs (off the critical path: the replacement exists already)."""

    cluster: str
    uid: str
    attempt: int
    via: str


@dataclass(frozen=True)
class Finish:
    verdict: Verdict


class Level(enum.IntEnum):
    INFO = 20
    WARNING = 30


@dataclass(frozen=True)
class Note:
    """One readable log line per decision."""

    level: Level
    text: str


Action = (Probe | Create | Watch | Recheck | ReadBack | Claim | Inquire | Delete | NamePreemptor
          | Finish | Note)


# -- the state -----------------------------------------------------------------------------
class Phase(str, enum.Enum):
    START = "start"
    PLACING = "placing"
    WATCHING = "watching"
    DRAINING = "draining"  # the attempt is over; its pod has not stopped yet
    DONE = "done"


@dataclass(frozen=True)
class Follow:
    job: Job
    timeline: Timeline = field(default_factory=Timeline)
    orphans: tuple[Orphan, ...] = ()
    phase: Phase = Phase.START
    # placing
    candidates: tuple[Candidate, ...] = ()  # the decision's rest; the first is being created
    home_only: bool = False  # the candidates are the org's own clusters (rest not asked)
    home_seen: Snapshot | None = None  # what the home probe saw, while the rest is asked
    refused: tuple[tuple[str, Refusal, str], ...] = ()  # this round: (cluster, why, message)
    transient: bool = False  # a cluster did not answer the probe: retrying may help
    placing_since: float | None = None
    retry_delay: float = FIRST_RETRY_DELAY
    moved_at: float | None = None  # when the move began (replacement latency)
    to_name: tuple[int, Outcome] | None = None  # preempted attempt whose preemptor to name
    # watching
    pod: dict[str, Any] | None = None  # the current attempt's pod as last seen
    down_since: float | None = None
    rebalance_to: str | None = None  # a better cluster, pending a recheck of the queued pod
    pod_gone: bool = False  # the current attempt's pod was seen deleted, or not found
    housekeeping_at: float | None = None  # watching: when orphans are deleted next
    wake_at: float | None = None
    verdict: Verdict | None = None
    latencies: tuple[float, ...] = ()  # seconds from preemption seen to replacement created
    # fencing (claims): who this follower is, and the Lease it holds for the next attempt
    me: str = ""
    held: Held | None = None
    claimed_at: float | None = None  # when this follower last wrote ``held``
    claim_wait: bool = False  # another follower holds the claim: look again at wake_at
    # another's claim without a successor: (its resourceVersion, when first seen here);
    # expiry is measured on this follower's clock, as client-go's leader election does
    seen_claim: tuple[str, float] | None = None
    unrecorded: Claim | None = None  # a record not yet answered: retried on every tick
    drain_until: float | None = None  # draining: place anyway after this
    members: tuple[gang.Member, ...] = ()  # a gang's pods as last seen (watching, draining)

    # JSON: trigger kwargs and events carry it (keys kept from the first format)
    def to_dict(self) -> dict[str, Any]:
        """JSON for a trigger row: the fleet by reference (its source and digest; the shell
        reads it again, fleetconf.saved_fleet), the rest whole."""
        job = self.job
        return {
            "fleet": {"source": job.fleet.source, "digest": job.fleet.digest},
            "request": _request_dict(job.request), "template": job.template,
            "identity": job.identity.to_dict(), "settings": job.settings.to_dict(),
            "timeline": self.timeline.to_list(), "orphans": [asdict(o) for o in self.orphans],
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any], fleet: Fleet) -> Follow:
        """The state ``to_dict`` wrote, following by `fleet` (the one it names, read again)."""
        job = Job(
            fleet=fleet, request=Request(**state["request"]), template=state["template"],
            identity=TaskIdentity(**state["identity"]),
            settings=Settings.from_dict(state["settings"]),
        )
        return cls(job, Timeline.from_list(state["timeline"]),
                   tuple(Orphan(**o) for o in state.get("orphans") or []))

    def unreachable_attempt(self) -> Attempt | None:
        """An attempt on a cluster the fleet (as this org reaches it) no longer has, among
        those a follower acts on (every unfinished one, and the last, which it watches):
        its pod cannot be followed or deleted, so nothing may be placed meanwhile."""
        last = self.timeline.last
        return next((a for a in self.timeline.attempts
                     if (a is last or not a.finished)
                     and a.cluster not in self.job.fleet.clusters), None)

    def lost_orphans(self) -> tuple[Orphan, ...]:
        """Left-over pods to delete on clusters the fleet no longer gives this org."""
        return tuple(o for o in self.orphans if o.cluster not in self.job.fleet.clusters)


Step = tuple[Follow, list[Action]]


def _request_dict(request: Request) -> dict[str, Any]:
    """A one-pod request is written as before gangs existed."""
    return {k: v for k, v in asdict(request).items() if k != "nodes" or v != 1}


def step(state: Follow, event: Event, now: float) -> Step:
    """The next state and what to do, for one event at time ``now`` (epoch seconds)."""
    if state.phase is Phase.DONE:
        return state, []
    handler = _HANDLERS[type(event)]
    new, actions = handler(state, event, now)
    if new.phase is Phase.WATCHING and new.verdict is None:
        if new.housekeeping_at is None:
            new = replace(new, housekeeping_at=now + HOUSEKEEPING_SECONDS)
        new = replace(new, wake_at=wake_at(new, now))
    return new, actions


# -- starting and placing ------------------------------------------------------------------
def _start(state: Follow, _: Start, now: float) -> Step:
    last = state.timeline.last
    if last is None:
        return _begin_placing(state, now, moved_at=None)
    return replace(state, phase=Phase.WATCHING, members=()), [_watch(state, last)]


def _begin_placing(state: Follow, now: float, moved_at: float | None) -> Step:
    state = replace(state, phase=Phase.PLACING, placing_since=now, moved_at=moved_at,
                    retry_delay=FIRST_RETRY_DELAY, refused=(), candidates=(), home_seen=None,
                    pod=None,
                    pod_gone=False, down_since=None, rebalance_to=None, wake_at=None,
                    held=None, claimed_at=None, claim_wait=False, seen_claim=None,
                    drain_until=None, housekeeping_at=None, members=())
    return state, [*_pending_record(state), _first_step(state, now)]


def _first_step(state: Follow, now: float) -> Claim | Probe:
    """A later attempt is claimed before anything else (another follower may have made it
    already: then there is nothing to place); the first one is placed at once."""
    return _claim(state, now, state.timeline, None, None) if _fenced(state) else first_probe(state)


def first_probe(state: Follow) -> Probe:
    """A first attempt asks the org's own clusters first (placement.home): where one takes
    it now, the other clusters could not rank above it and are never asked."""
    return Probe(clusters=placement.home(state.job.request, state.job.fleet))


def _fenced(state: Follow) -> bool:
    return state.timeline.last is not None


def _pending_record(state: Follow) -> list[Action]:
    return [state.unrecorded] if state.unrecorded is not None else []


def _probed(state: Follow, event: Probed, now: float) -> Step:
    if event.shared:
        return _rebalance_probed(state, event.snapshot, now)
    if state.phase is not Phase.PLACING:
        return state, []
    job, snapshot, asked = state.job, event.snapshot, event.asked
    if state.home_seen is not None:  # the rest of the fleet, asked after the home probe
        snapshot = Snapshot({**state.home_seen.clusters, **snapshot.clusters},
                            taken_at=state.home_seen.taken_at)
        asked, state = (), replace(state, home_seen=None)
    try:
        decision = placement.choose(job.request, job.fleet, snapshot, state.timeline,
                                    now=now, exclude=_refused_map(state), asked=asked)
    except PlacementError as exc:
        return _finish(state, Status.NO_PLACEMENT, str(exc))
    if asked:
        home = placement.home_candidates(decision)
        if not home:  # the rest is asked; the home's answers (or silence) are kept
            rest = tuple(n for n in job.fleet.clusters if n not in asked)
            return replace(state, home_only=False, home_seen=snapshot), [Note(
                Level.INFO, f"org {job.request.org}'s own clusters ({', '.join(asked)}) "
                            "cannot take it now: asking the other clusters"),
                Probe(clusters=rest)]
        decision = decision.trying_only(home)
    notes: list[Action] = [Note(Level.INFO, decision.summary()), Note(
        Level.INFO, f"placement of attempt {state.timeline.next_number}:\n{decision.table()}")]
    transient = any(not c.reachable for c in snapshot.clusters.values())
    state = replace(state, candidates=decision.candidates, transient=transient,
                    home_only=bool(asked))
    if not decision.candidates:
        new, actions = _nothing_took_it(state, now, decision.summary())
        return new, notes + actions
    return state, [*notes, _next_create(state, now)]


def _next_create(state: Follow, now: float) -> Claim | Create:
    """A first attempt is created at once (one worker places it); every later one only by
    the follower that holds its claim, written within CLAIM_FRESH_SECONDS (else renewed)."""
    fresh = state.claimed_at is not None and now - state.claimed_at < CLAIM_FRESH_SECONDS
    if not _fenced(state) or (state.held is not None and fresh):
        return _create_action(state, state.candidates[0])
    return _claim(state, now, state.timeline, None, state.held)


def _claim(state: Follow, now: float, history: Timeline, successor: Attempt | None,
           held: Held | None) -> Claim:
    """The Lease named after ``history``'s last attempt, claiming the one after it (and
    naming ``successor`` once created), on that attempt's cluster. Only when that cluster
    was lost is a second one allowed (the first other in fleet order), tried when the first
    does not answer: a fence that moved for any lesser reason could split the claim."""
    ended, job = history.last, state.job
    assert ended is not None
    fences: tuple[str, ...] = (ended.cluster,)
    fallback = claims.fallback_cluster(list(job.fleet.clusters), ended.cluster)
    if ended.reason == Reason.CLUSTER_UNREACHABLE and fallback is not None:
        fences += (fallback,)
    body = claims.lease(namespace="", name=ended.pod, task_key=job.identity.key,
                        try_number=job.identity.try_number, attempt=ended.number + 1,
                        holder=state.me, now=now, history=history, successor=successor,
                        resource_version=held.resource_version if held else "")
    return Claim(fences, body, held, record=successor is not None)


def _record(state: Follow, now: float) -> Claim:
    """Name the attempt just created on its claim, for a follower that lost the claim."""
    history = Timeline(state.timeline.attempts[:-1])
    return _claim(state, now, history, state.timeline.last, state.held)


def _create_action(state: Follow, cand: Candidate) -> Create:
    job, timeline = state.job, state.timeline
    pod = job.identity.pod_name(timeline.next_number)
    body = pods.build(job.template, identity=job.identity, attempt=timeline.next_number,
                      cluster=cand.cluster, tier=cand.tier, request=job.request,
                      preemptions=timeline.preemptions, history_json=timeline.to_json(),
                      orphans=[asdict(o) for o in state.orphans  # never its own pods
                               if not _ours(o, cand.cluster.name, _names(state, pod))])
    if job.request.nodes == 1:
        return Create(cand.cluster.name, body)
    group = gang.members(body, job.request.nodes, job.request.gpu_count,
                         pods.main_index(body["spec"]))
    return Create(cand.cluster.name, group[0], (gang.service(group[0]), *group[1:]))


# -- a gang (request.nodes > 1): one attempt, N pods -----------------------------------------
def _names(state: Follow, leader: str) -> tuple[str, ...]:
    """The pods of the attempt whose pod (leader) is ``leader``: one, or a gang's."""
    return gang.member_names(leader, state.job.request.nodes)


def _ours(orphan: Orphan, cluster: str, names: tuple[str, ...]) -> bool:
    """Whether ``orphan`` is one of ``names`` on ``cluster``: an attempt's pods are never
    orphans of it, every member of a gang included (a refused create on that cluster left
    all their names orphans; deleted now, they would take the gang just made)."""
    return orphan.cluster == cluster and orphan.pod in names


def _watch(state: Follow, attempt: Attempt) -> Watch:
    members = _names(state, attempt.pod) if state.job.request.nodes > 1 else ()
    return Watch(attempt.cluster, attempt.namespace, attempt.pod, members)


def _attempt_orphans(state: Follow, attempt: Attempt) -> tuple[Orphan, ...]:
    """Every pod of the attempt, as orphans: a gang goes whole."""
    return tuple(Orphan(attempt.cluster, attempt.namespace, name)
                 for name in _names(state, attempt.pod))


def _with_orphans(state: Follow, more: tuple[Orphan, ...]) -> Follow:
    return replace(state, orphans=(*state.orphans, *(o for o in more if o not in state.orphans)))


def _refused_map(state: Follow) -> dict[str, str]:
    return {cluster: f"{why.value}: {message}" for cluster, why, message in state.refused}


def _created(state: Follow, event: Created, now: float) -> Step:
    if state.phase is not Phase.PLACING or not state.candidates:
        return state, []
    cand = state.candidates[0]
    number = state.timeline.next_number
    leader = state.job.identity.pod_name(number)
    attempt = Attempt(number=number, cluster=cand.cluster.name, tier=cand.tier.name,
                      pod=leader, namespace=cand.cluster.namespace, placed_at=now,
                      why=cand.reason,
                      members=_names(state, leader) if state.job.request.nodes > 1 else ())
    orphans = tuple(o for o in state.orphans  # ours, a gang's every member: keep them
                    if not _ours(o, attempt.cluster, _names(state, leader)))
    new = replace(state, phase=Phase.WATCHING, timeline=state.timeline.add(attempt),
                  orphans=orphans, candidates=(), refused=(), placing_since=None, pod=None,
                  pod_gone=False, members=())
    actions: list[Action] = [
        Note(Level.INFO, f"attempt {number}: pod {attempt.pod} created on {attempt.cluster} as "
                         f"{attempt.tier} ({cand.reason})")]
    if state.held is not None:
        new = replace(new, unrecorded=_record(new, now))
        actions.append(new.unrecorded)  # type: ignore[arg-type]
    actions.append(_watch(new, attempt))
    if state.moved_at is not None:
        latency = now - state.moved_at
        new = replace(new, latencies=(*state.latencies, latency), moved_at=None)
        actions.append(Note(Level.INFO, f"replacement created {latency * 1000:.0f} ms after the "
                                        "preemption was seen"))
    return _after_move(new, actions)


def _after_move(state: Follow, actions: list[Action]) -> Step:
    """Off the critical path, once the replacement exists: name the preemptor, reap orphans."""
    if state.to_name is not None:
        index, outcome = state.to_name
        cluster = state.timeline.attempts[index].cluster
        actions.append(NamePreemptor(cluster, outcome.preemptor, index, preempted_by(outcome)))
        state = replace(state, to_name=None)
    return state, actions + [Delete(o) for o in state.orphans]


def _create_conflict(state: Follow, event: CreateConflict, now: float) -> Step:
    labels = ((event.existing or {}).get("metadata") or {}).get("labels") or {}
    if event.existing is not None and labels.get(L_TASK_KEY) == state.job.identity.key:
        new, actions = _created(state, Created(event.cluster), now)
        return new, [Note(Level.INFO, f"adopted the existing pod on {event.cluster} (same "
                                      "task, same attempt)"), *actions]
    return _refused(state, event.cluster, Refusal.NAME_TAKEN,
                    "the pod name is taken by another object", now)


def _create_failed(state: Follow, event: CreateFailed, now: float) -> Step:
    """A refusal falls through to the next candidate; a create without a clear answer is read
    back first, as it may have made the pod."""
    if not event.answer.ambiguous:
        return _refused(state, event.cluster, Refusal.REJECTED, event.message[:160], now)
    if state.phase is not Phase.PLACING or not state.candidates:
        return state, []
    pod = state.job.identity.pod_name(state.timeline.next_number)
    return state, [
        Note(Level.WARNING, f"cluster {event.cluster}: {event.answer.value} to the create "
                            f"({event.message[:160]}); reading {pod} back before trying "
                            "another cluster"),
        ReadBack(event.cluster, state.candidates[0].cluster.namespace, pod, event.message[:160],
                 _names(state, pod) if state.job.request.nodes > 1 else ())]


def _read_back(state: Follow, event: ReadBackAnswer, now: float) -> Step:
    """The pod is there: it is this attempt's. Not there: the cluster did not take it. No
    answer again: it may be there, an orphan to delete once the cluster answers."""
    found, cluster = event.found, event.cluster
    if isinstance(found, PodSeen) and not found.deleted:
        labels = (found.pod.get("metadata") or {}).get("labels") or {}
        if labels.get(L_TASK_KEY) != state.job.identity.key:
            return _refused(state, cluster, Refusal.NAME_TAKEN,
                            "the pod name is taken by another object", now)
        if state.phase is not Phase.PLACING or not state.candidates:
            return state, []  # not asked for in this phase (the shell asks in order)
        new, actions = _created(state, Created(cluster), now)
        return new, [Note(Level.INFO, f"the create on {cluster} had no clear answer but made "
                                      "the pod: following it"), *actions]
    if isinstance(found, Unreachable):
        return _refused(state, cluster, Refusal.UNREACHABLE,
                        f"{event.message}; reading it back: {found.detail[:120]}", now)
    return _refused(state, cluster, Refusal.NOT_CREATED, event.message, now)


def _refused(state: Follow, cluster: str, why: Refusal, message: str, now: float) -> Step:
    """The cluster did not take the pod: try the next candidate. A lost answer may hide a
    created pod, so its name on that cluster becomes an orphan (deleted once it answers)."""
    if state.phase is not Phase.PLACING or not state.candidates:
        return state, []
    orphans = state.orphans
    # no clear answer: the pod may exist there, or appear there a moment later; a gang's
    # refusal may come after its leader and some members were made
    if why.transient or state.job.request.nodes > 1:
        cand = state.candidates[0]
        pod = state.job.identity.pod_name(state.timeline.next_number)
        made = tuple(Orphan(cluster, cand.cluster.namespace, name)
                     for name in _names(state, pod))
        orphans = (*orphans, *(o for o in made if o not in orphans))
    rest = state.candidates[1:]
    state = replace(state, orphans=orphans, candidates=rest,
                    refused=(*state.refused, (cluster, why, message)))
    if not rest and state.home_only:  # the clusters not asked yet may take it
        return replace(state, home_only=False), [Note(
            Level.WARNING, f"cluster {cluster} {why.value}: {message}; asking every cluster"),
            Probe()]
    note = Note(Level.WARNING, f"cluster {cluster} {why.value}: {message}; "
                               + ("trying the next candidate" if rest else "no candidate left"))
    if rest:
        return state, [note, _next_create(state, now)]
    new, actions = _nothing_took_it(state, now, f"every candidate refused the pod "
                                                f"({_refused_text(state)})")
    return new, [note, *actions]


def _refused_text(state: Follow) -> str:
    return "; ".join(f"{c}: {why.value}: {m}" for c, why, m in state.refused)


def _nothing_took_it(state: Follow, now: float, summary: str) -> Step:
    """Retry for a while when a cluster may come back; otherwise there is no placement."""
    transient = state.transient or any(w.transient for _, w, _m in state.refused)
    since = state.placing_since if state.placing_since is not None else now
    if not transient or now - since > state.job.settings.placement_retry_seconds:
        return _finish(state, Status.NO_PLACEMENT, summary)
    refused = tuple(r for r in state.refused if not r[1].transient)
    delay = state.retry_delay
    return replace(state, refused=refused, wake_at=now + delay,
                   retry_delay=min(delay * 2, MAX_RETRY_DELAY)), []


def _tick(state: Follow, _: Tick, now: float) -> Step:
    if state.phase is Phase.PLACING:
        if state.wake_at is None or now < state.wake_at:
            return state, []
        again = _first_step(state, now) if state.held is None else Probe()
        return replace(state, wake_at=None), [*_pending_record(state), again]
    if state.phase is Phase.DRAINING:
        if state.drain_until is not None and now >= state.drain_until:
            return _drained(state, now, "its grace period is over; it may still be stopping",
                            Level.WARNING)
        return state, _pending_record(state)
    if state.phase is not Phase.WATCHING:
        return state, []
    if _grace_over(state, now):
        return _cluster_lost(state, now)
    queued_too_long = _queue_timeout(state, now)
    if queued_too_long is not None:
        return _attempt_over(state, queued_too_long, now)
    state = replace(state, housekeeping_at=now + HOUSEKEEPING_SECONDS)
    actions: list[Action] = [*(Delete(o) for o in state.orphans), *_pending_record(state)]
    if _rebalance_due(state, now):
        actions.append(Probe(shared=True))
    return state, actions


# -- watching ------------------------------------------------------------------------------
def _pod_seen(state: Follow, event: PodSeen, now: float) -> Step:
    if state.job.request.nodes > 1 and state.phase in (Phase.WATCHING, Phase.DRAINING):
        members = gang.seen(state.members, event.pod, event.deleted)
        return _gang_changed(replace(state, members=members), now)
    if state.phase is Phase.DRAINING:
        return _draining_seen(state, event, now)
    if state.phase is not Phase.WATCHING:
        return state, []
    return _watching_seen(state, event, now)


def _watching_seen(state: Follow, event: PodSeen, now: float) -> Step:
    last = state.timeline.last
    assert last is not None  # WATCHING always has an attempt
    outcome = outcomes.classify(event.pod, "DELETED" if event.deleted else "MODIFIED")
    state = replace(state, pod=event.pod, pod_gone=event.deleted, down_since=None)
    actions: list[Action] = []
    if outcome.kind is Kind.RUNNING and last.started_at is None:
        started, _ = outcomes.pod_times(event.pod)
        state = replace(state, timeline=state.timeline.update_last(
            started_at=max(observed(started, now), last.placed_at)))
        actions.append(Note(Level.INFO, f"attempt {last.number} running on {last.cluster}"))
    if outcome.kind.terminal or outcome.kind.moves:
        new, more = _attempt_over(state, outcome, now)
        return new, actions + more
    if state.rebalance_to is not None:
        new, more = _rebalance_checked(state, outcome, now)
        return new, actions + more
    queued_too_long = _queue_timeout(state, now)
    if queued_too_long is not None:
        new, more = _attempt_over(state, queued_too_long, now)
        return new, actions + more
    return state, actions


def _pod_gone(state: Follow, event: PodGone, now: float) -> Step:
    last = state.timeline.last
    if state.job.request.nodes > 1 and state.phase in (Phase.WATCHING, Phase.DRAINING):
        assert last is not None
        members = gang.gone(state.members, event.pod or last.pod)
        return _gang_changed(replace(state, members=members), now)
    if state.phase is Phase.DRAINING:
        return _drained(state, now, "it is gone", Level.INFO)
    if state.phase is not Phase.WATCHING:
        return state, []
    assert last is not None
    return _watching_gone(replace(state, pod_gone=True), last.pod, now)


def _watching_gone(state: Follow, pod: str, now: float) -> Step:
    """The pod (a gang: the member ``pod``) is gone; ``state.pod`` is how it was last seen."""
    outcome = _gone_outcome(state)
    last = state.timeline.last
    assert last is not None
    if outcome.reason in (Reason.NOT_FOUND, Reason.DELETED):  # its end was not seen: ask
        return state, [Inquire(last.cluster, last.namespace, pod, last.placed_at)]
    return _attempt_over(state, outcome, now)


def _gang_changed(state: Follow, now: float) -> Step:
    """A member's news, as the gang's: watching, the member that speaks for the gang
    (gang.view) is followed as the one pod is; draining, the gang has stopped when every
    member has."""
    names = _names(state, state.timeline.last.pod)  # type: ignore[union-attr]
    if state.phase is Phase.DRAINING:
        stopper = gang.stopping(names, state.members)
        if stopper is None:
            return _drained(state, now, "every member stopped", Level.INFO)
        return _draining_seen(state, PodSeen(stopper.pod or {}), now)
    speaker = gang.view(names, state.members)
    if speaker is None or state.pod_gone:  # pod_gone: its Events are being read (Inquire)
        return state, []  # a member not seen yet: its first event is on its way
    if speaker.unseen_end:
        return _watching_gone(replace(state, pod=speaker.pod, pod_gone=True), speaker.name, now)
    return _watching_seen(state, PodSeen(speaker.pod or {}, deleted=speaker.gone), now)


def _gone_outcome(state: Follow) -> Outcome:
    return outcomes.classify(state.pod, "DELETED") if state.pod else outcomes.classify(None)


def _inquired(state: Follow, event: Inquired, now: float) -> Step:
    """The Events said how the pod ended (a preemption while no follower ran), or not."""
    if state.phase is not Phase.WATCHING:
        return state, []
    if event.outcome is None:
        return _attempt_over(state, _gone_outcome(state), now)
    return _attempt_over(state, event.outcome, now)


def _unreachable(state: Follow, event: Unreachable, now: float) -> Step:
    if state.phase is not Phase.WATCHING or state.down_since is not None:
        return state, []
    last = state.timeline.last
    assert last is not None
    grace = state.job.settings.unreachable_grace
    # a pending rebalance re-check got no answer: drop it, the next check asks again
    return replace(state, down_since=now, rebalance_to=None), [Note(
        Level.WARNING, f"cluster {last.cluster} unreachable ({event.detail}); moving the work "
                       f"after {grace:g}s")]


def _reconnected(state: Follow, _: Reconnected, now: float) -> Step:
    return replace(state, down_since=None), []


def _grace_over(state: Follow, now: float) -> bool:
    return (state.down_since is not None
            and now - state.down_since >= state.job.settings.unreachable_grace)


def _cluster_lost(state: Follow, now: float) -> Step:
    """Unreachable past the grace: the pod may still run there; delete it once it answers."""
    last = state.timeline.last
    assert last is not None
    grace = state.job.settings.unreachable_grace
    outcome = Outcome(Kind.LOST, Reason.CLUSTER_UNREACHABLE.value,
                      f"cluster {last.cluster} unreachable for more than {grace:g}s",
                      by=last.cluster)
    state = _with_orphans(state, _attempt_orphans(state, last))
    return _attempt_over(state, outcome, now)


def _queue_timeout(state: Follow, now: float) -> Outcome | None:
    last, limit = state.timeline.last, state.job.settings.queue_timeout
    if not limit or last is None or last.started_at is not None or state.pod is None:
        return None
    if outcomes.classify(state.pod).kind is not Kind.PENDING:
        return None
    waited = now - last.placed_at
    if waited <= limit:
        return None
    return Outcome(Kind.PENDING, Reason.QUEUE_TIMEOUT.value,
                   f"attempt {last.number} queued on {last.cluster} for {waited:.0f}s, more "
                   f"than queue_timeout={limit:g}s")


def _queued(pod: dict[str, Any] | None) -> bool:
    return pod is not None and outcomes.classify(pod).reason == Reason.QUEUED_BY_KUEUE


def _rebalance_due(state: Follow, now: float) -> bool:
    last, after = state.timeline.last, state.job.settings.rebalance_after
    return (bool(after) and last is not None and state.rebalance_to is None
            and _queued(state.pod) and now - last.placed_at >= after)


def _rebalance_probed(state: Follow, snapshot: Snapshot, now: float) -> Step:
    """A queued attempt moves when another cluster can run it now (it lost a race for GPUs)."""
    if state.phase is not Phase.WATCHING or not _rebalance_due(state, now):
        return state, []
    last = state.timeline.last
    assert last is not None
    job = state.job
    decision = placement.choose(job.request, job.fleet, snapshot, state.timeline, now=now)
    best = decision.chosen
    movable = (placement.Mode.NOW, placement.Mode.RECLAIM)
    if best is None or best.cluster.name == last.cluster or best.mode not in movable:
        return state, []
    return replace(state, rebalance_to=f"{best.cluster.name} ({best.reason})"), [
        Recheck(last.cluster, last.namespace, last.pod)]


def _rebalance_checked(state: Follow, outcome: Outcome, now: float) -> Step:
    target, state = state.rebalance_to, replace(state, rebalance_to=None)
    last = state.timeline.last
    if last is None or not _queued(state.pod):
        return state, []  # admitted meanwhile: stay
    return _attempt_over(state, Outcome(
        Kind.PENDING, Reason.REBALANCED.value,
        f"queued on {last.cluster}; {target} can run it now"), now)


# -- the end of an attempt -----------------------------------------------------------------
def _attempt_over(state: Follow, outcome: Outcome, now: float) -> Step:
    """Record how the attempt ended, then: a verdict, or the work moves."""
    state = replace(state, timeline=_record_end(state, outcome, now))
    if outcome.kind is Kind.SUCCEEDED:
        return _finish(state, Status.SUCCESS, "the pod succeeded", outcome)
    if outcome.kind is Kind.FAILED:
        return _finish(state, Status.FAILED, outcome.describe(), outcome)
    if outcome.reason == Reason.QUEUE_TIMEOUT:
        return _finish(state, Status.QUEUE_TIMEOUT, outcome.message, outcome)
    if outcome.reason == Reason.REBALANCED:
        return _rebalance(state, outcome, now)
    return _taken(state, outcome, now)


def _record_end(state: Follow, outcome: Outcome, now: float) -> Timeline:
    timeline, pod = state.timeline, state.pod
    last = timeline.last
    assert last is not None
    started, finished = outcomes.pod_times(pod)
    if last.started_at is None and started is not None:
        timeline = timeline.update_last(started_at=max(started, last.placed_at))  # whole secs
    ended = observed(finished, now) if outcome.kind.terminal else now
    ended = max(ended, timeline.last.started_at or ended)  # type: ignore[union-attr]
    return timeline.update_last(
        ended_at=ended, outcome=outcome.kind.value, reason=outcome.reason,
        message=outcome.message[:500], exit_code=outcome.exit_code,
        preempted_by=preempted_by(outcome))


def _rebalance(state: Follow, outcome: Outcome, now: float) -> Step:
    last = state.timeline.last
    assert last is not None
    gone = _attempt_orphans(state, last)
    state = _with_orphans(replace(state, timeline=state.timeline.update_last(
        outcome=Kind.MOVED.value)), gone)
    new, actions = _begin_placing(state, now, moved_at=None)
    return new, [Note(Level.INFO, f"attempt {last.number}: {outcome.message}; moving it"),
                 *(Delete(o) for o in gone), *actions]


def _taken(state: Follow, outcome: Outcome, now: float) -> Step:
    """Preempted or lost: not the job's fault. Move it, unless a limit says otherwise."""
    last = state.timeline.last
    assert last is not None
    settings = state.job.settings
    note: list[Action] = [Note(Level.WARNING, f"attempt {last.number} on {last.cluster}: "
                                              f"{outcome.describe()}")]
    if state.job.request.nodes > 1:
        state, more = _gang_taken(state, last)
        note += more
    if (outcome.reason == Reason.CLUSTER_UNREACHABLE
            and settings.on_unreachable is OnUnreachable.FAIL):
        new, actions = _finish(state, Status.UNREACHABLE, outcome.message, outcome)
    elif state.timeline.moves > settings.max_preemptions:
        new, actions = _finish(state, Status.PREEMPTION_LIMIT, (
            f"moved {state.timeline.moves} times, more than max_preemptions="
            f"{settings.max_preemptions}"), outcome)
    else:
        index = len(state.timeline.attempts) - 1
        to_name = (index, outcome) if outcome.kind is Kind.PREEMPTED and outcome.preemptor else None
        state = replace(state, to_name=to_name)
        if _must_drain(state, outcome):
            new, actions = _drain(state, now)
        else:
            new, actions = _begin_placing(state, now, moved_at=now)
    return new, [*note, *actions]


def _gang_taken(state: Follow, last: Attempt) -> tuple[Follow, list[Action]]:
    """One member taken takes the gang: every member nobody is deleting yet is deleted now
    (a gang with a member missing would wait at its rendezvous forever; those Kueue is
    preempting keep their grace period), and the wait for termination waits for the
    member still stopping, if any."""
    names = _names(state, last.pod)
    gone = tuple(Orphan(last.cluster, last.namespace, name)
                 for name in gang.staying(names, state.members))
    stopper = gang.stopping(names, state.members)
    state = replace(_with_orphans(state, gone), pod=stopper.pod if stopper else state.pod,
                    pod_gone=stopper is None)
    return state, [Note(Level.WARNING, f"attempt {last.number}: the gang goes whole; deleting "
                                       f"{len(gone)} of its {len(names)} pods"),
                   *(Delete(o) for o in gone)]


# -- waiting for a taken pod to stop (wait_for_termination) --------------------------------
def _must_drain(state: Follow, outcome: Outcome) -> bool:
    """The old pod may still run its containers (a checkpoint being written): it started,
    it is still there, and its cluster answers (a lost cluster's pod is an orphan)."""
    last, pod = state.timeline.last, state.pod
    return (state.job.settings.wait_for_termination and last is not None
            and last.started_at is not None and pod is not None and not state.pod_gone
            and outcome.reason != Reason.CLUSTER_UNREACHABLE
            and (pod.get("status") or {}).get("phase") not in TERMINAL_PHASES)


def _termination_deadline(pod: dict[str, Any], now: float) -> float:
    """The end of the pod's grace period (plus a margin for its DELETED to arrive)."""
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    deleting = epoch(meta.get("deletionTimestamp"))  # = the deletion plus the grace period
    if deleting is not None:
        return max(deleting, now) + TERMINATION_MARGIN
    grace = spec.get("terminationGracePeriodSeconds")
    return now + (DEFAULT_GRACE_SECONDS if grace is None else float(grace)) + TERMINATION_MARGIN


def _drain(state: Follow, now: float) -> Step:
    last, pod = state.timeline.last, state.pod
    assert last is not None and pod is not None
    until = _termination_deadline(pod, now)
    return replace(state, phase=Phase.DRAINING, moved_at=now, drain_until=until,
                   wake_at=until), [Note(
        Level.INFO, f"attempt {last.number}: waiting for pod {last.pod} to stop before placing "
                    f"the next attempt (wait_for_termination; at most {until - now:.0f}s)")]


def _draining_seen(state: Follow, event: PodSeen, now: float) -> Step:
    phase = (event.pod.get("status") or {}).get("phase")
    if event.deleted or phase in TERMINAL_PHASES:
        return _drained(replace(state, pod=event.pod), now, f"it stopped ({phase})"
                        if not event.deleted else "it is gone", Level.INFO)
    until = min(state.drain_until or now, _termination_deadline(event.pod, now))
    return replace(state, pod=event.pod, drain_until=until, wake_at=until), []


def _drained(state: Follow, now: float, why: str, level: Level) -> Step:
    last = state.timeline.last
    assert last is not None
    waited = now - (state.moved_at if state.moved_at is not None else now)
    new, actions = _begin_placing(state, now, moved_at=state.moved_at)
    return new, [Note(level, f"attempt {last.number}: pod {last.pod} waited on for "
                             f"{waited * 1000:.0f} ms: {why}; placing the next attempt"),
                 *actions]


# -- the claim on the next attempt (claims) ------------------------------------------------
def _claim_answer(state: Follow, event: ClaimAnswer, now: float) -> Step:
    if event.record:
        return _recorded(state, event)
    if state.phase is not Phase.PLACING:
        return state, []
    number, found = state.timeline.next_number, event.found
    if event.result is ClaimResult.WON:
        assert found is not None
        state = replace(state, held=found.held, claimed_at=now, claim_wait=False,
                        seen_claim=None)
        if not state.candidates:  # claimed first: now see where it goes
            return state, [Probe()]
        return state, [_create_action(state, state.candidates[0])]
    if event.result is ClaimResult.GONE:
        return _finish(state, Status.ABANDONED, f"the claim on attempt {number} was deleted "
                                                "(a tombstone swept, or by hand): the task "
                                                "has its verdict elsewhere")
    if event.result is ClaimResult.NO_ANSWER:
        state = replace(state, candidates=(), transient=True, claim_wait=False)
        new, actions = _nothing_took_it(state, now, f"no cluster answered the claim on attempt "
                                                    f"{number}: {event.detail}")
        return new, [Note(Level.WARNING, f"claim on attempt {number}: no answer "
                                         f"({event.detail[:160]})"), *actions]
    assert found is not None
    if found.verdict:
        return _ended_elsewhere(state, found, number)
    if found.successor is not None:
        return _follow_successor(state, found)
    return _claim_taken(state, found, now)


def _ended_elsewhere(state: Follow, found: claims.Found, number: int) -> Step:
    """The claim is a tombstone: another follower gave the task its verdict. Create nothing.
    That verdict is the task's, and this copy reports it: Airflow may still wait for one
    (the finisher's end event was lost with its triggerer: seen in the soak); a stale copy's
    report is ignored. A task killed elsewhere has nothing to report (abandoned)."""
    try:
        status = Status(found.verdict)
    except ValueError:  # claims.KILLED, or a verdict of a later version
        status = Status.ABANDONED
    if status is Status.ERROR:
        status = Status.ABANDONED  # the finisher's bug is in its own log, not this task's
    history = found.history if found.history.attempts else state.timeline
    succ = found.successor
    if succ is not None and (history.last is None or succ.number > history.last.number):
        history = history.add(succ)
    return _finish(replace(state, timeline=history), status,
                   f"the claim on attempt {number} is a tombstone: the task ended "
                   f"({found.verdict}) under {found.holder}; creating nothing")


def _claim_taken(state: Follow, found: claims.Found, now: float) -> Step:
    """Another follower claimed it and has not named an attempt: wait for it, or take the
    claim over once it has not changed for its duration (measured on this clock)."""
    number, rv = state.timeline.next_number, found.held.resource_version
    seen = state.seen_claim if state.seen_claim and state.seen_claim[0] == rv else (rv, now)
    if now - seen[1] > found.duration:
        return replace(state, claim_wait=False, seen_claim=None), [
            Note(Level.WARNING, f"the claim of {found.holder} on attempt {number} did not "
                                f"change for {found.duration:g}s: taking it over"),
            _claim(state, now, state.timeline, None, found.held)]
    note: list[Action] = [] if state.claim_wait else [Note(
        Level.INFO, f"attempt {number} is claimed by {found.holder}: waiting for its pod")]
    return replace(state, claim_wait=True, seen_claim=seen, candidates=(),
                   wake_at=now + CLAIM_POLL_SECONDS), note


def _follow_successor(state: Follow, found: claims.Found) -> Step:
    """Step down: another follower created the attempt; follow it, create nothing. Its
    claim's timeline is taken too: it has the attempts a restarted follower never saw."""
    succ = found.successor
    assert succ is not None
    history = found.history if found.history.attempts else state.timeline
    orphans = tuple(o for o in state.orphans  # never the attempt it now follows
                    if not _ours(o, succ.cluster, _names(state, succ.pod)))
    new = replace(state, phase=Phase.WATCHING, timeline=history.add(succ), orphans=orphans,
                  candidates=(), refused=(), placing_since=None, pod=None, pod_gone=False,
                  held=None, claimed_at=None, claim_wait=False, seen_claim=None,
                  moved_at=None, to_name=None, members=())
    return new, [Note(Level.INFO, f"attempt {succ.number} was created on {succ.cluster} by "
                                  f"another follower ({found.holder}): following it instead"),
                 _watch(new, succ)]


def _recorded(state: Follow, event: ClaimAnswer) -> Step:
    """Naming the created attempt on its claim: retried while the cluster does not answer
    (in any phase, across moves). Taken meanwhile: the claim expired before the create."""
    if event.result is ClaimResult.WON:
        return replace(state, unrecorded=None), []
    if event.result is ClaimResult.NO_ANSWER:
        return state, [Note(Level.WARNING, f"could not name the created attempt on its claim "
                                           f"({event.detail[:120]}); trying again")]
    if event.found is not None and event.found.verdict:
        return _entombed_meanwhile(replace(state, unrecorded=None), event.found)
    holder = event.found.holder if event.found else "nobody (deleted)"
    return replace(state, unrecorded=None), [Note(
        Level.WARNING, f"the claim naming the created attempt is now {holder}'s: that "
                       "follower may create the attempt again")]


def _entombed_meanwhile(state: Follow, found: claims.Found) -> Step:
    """The task got its verdict elsewhere (killed, or marked, while this follower created its
    attempt): that pod is nobody's to follow. Delete it, and end."""
    last = state.timeline.last
    assert last is not None
    new, actions = _finish(state, Status.ABANDONED, f"the claim naming attempt {last.number} "
                                                    f"is a tombstone: the task ended "
                                                    f"({found.verdict}) under {found.holder}")
    return new, [*(Delete(o) for o in _attempt_orphans(state, last)), *actions]


def _finish(state: Follow, status: Status, message: str, outcome: Outcome | None = None) -> Step:
    verdict = Verdict(status, message, outcome)
    return replace(state, phase=Phase.DONE, verdict=verdict, wake_at=None), [
        Note(Level.INFO if status is Status.SUCCESS else Level.WARNING,
             f"verdict: {status.value}: {message}"), Finish(verdict)]


# -- housekeeping results ------------------------------------------------------------------
def _deleted(state: Follow, event: Deleted, now: float) -> Step:
    if not event.done:
        return state, []
    return replace(state, orphans=tuple(o for o in state.orphans if o != event.orphan)), [
        Note(Level.INFO, f"deleted orphaned pod {event.orphan.pod} on {event.orphan.cluster}")]


def _preemptor_named(state: Follow, event: PreemptorNamed, now: float) -> Step:
    attempts = list(state.timeline.attempts)
    if not event.who or not 0 <= event.attempt < len(attempts):
        return state, []
    attempts[event.attempt] = replace(attempts[event.attempt], preempted_by=event.who)
    number = attempts[event.attempt].number
    return replace(state, timeline=Timeline(tuple(attempts))), [
        Note(Level.WARNING, f"attempt {number} was preempted by {event.who}")]


def wake_at(state: Follow, now: float) -> float:
    """When a watching follower must look again if no event comes: the end of the
    unreachable grace, a rebalance or queue-timeout check, or housekeeping."""
    last, settings = state.timeline.last, state.job.settings
    # housekeeping is due at a fixed time: a pod whose events come more often than every
    # HOUSEKEEPING_SECONDS must not put off deleting orphans until the verdict
    times = [state.housekeeping_at if state.housekeeping_at is not None
             else now + HOUSEKEEPING_SECONDS]
    if state.down_since is not None:
        times.append(state.down_since + settings.unreachable_grace)
    if last is not None and _queued(state.pod) and settings.rebalance_after:
        due = last.placed_at + settings.rebalance_after
        times.append(due if due > now else now + settings.rebalance_after)
    if last is not None and last.started_at is None and settings.queue_timeout:
        times.append(last.placed_at + settings.queue_timeout + 0.001)
    return max(min(times), now + 0.05)


def preempted_by(outcome: Outcome) -> str:
    """'kueue (reclamation within the cohort)' for a preemption; '' otherwise."""
    if outcome.kind is not Kind.PREEMPTED:
        return ""
    cause = outcomes.preemption_cause(outcome.message)
    return f"{outcome.by} ({cause})" if cause else f"{outcome.by} ({outcome.reason})"


_HANDLERS: dict[type, Any] = {
    Start: _start, Probed: _probed, Created: _created, CreateConflict: _create_conflict,
    CreateFailed: _create_failed, ReadBackAnswer: _read_back, PodSeen: _pod_seen,
    PodGone: _pod_gone,
    Unreachable: _unreachable, Reconnected: _reconnected, Tick: _tick, Deleted: _deleted,
    PreemptorNamed: _preemptor_named, ClaimAnswer: _claim_answer, Inquired: _inquired,
}
