"""Where a GPU request should run now, and why every other cluster was not chosen.

Pure. The rule, in order (docs/concepts.md explains the reasons):

1. owned clusters with the GPUs free now            (owner tier, high priority)
2. owned clusters where borrowed work can be reclaimed (owner tier; Kueue preempts it)
3. borrowed clusters with the GPUs free now          (borrower tier, low priority)
4. queue: owned clusters first, then borrowed, shortest queue (pending GPUs) first

Inside a group: most free GPUs of the product, then lowest cost, then name. A borrowed
cluster that preempted this task within the cooldown is skipped; after
``pin_owned_after_preemptions`` preemptions the task only considers owned clusters, where
nobody can preempt it. The tier is derived from ownership, never requested.
"""

from __future__ import annotations

import enum
import itertools
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace

from airflow_provider_skyshare import gang
from airflow_provider_skyshare.fleet import BORROWER, OWNER, Cluster, Fleet, FleetError, Tier
from airflow_provider_skyshare.names import Kind, Reason
from airflow_provider_skyshare.snapshot import ClusterCapacity, Snapshot
from airflow_provider_skyshare.timeline import Timeline, format_table

_GPUS = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9_.-]*)\s*:\s*(-?\d+)\s*$")


class PlacementError(ValueError):
    """The request can never be placed as written (bad arguments or policy), with the fix."""


@dataclass(frozen=True)
class Request:
    gpu_product: str
    gpu_count: int
    org: str
    user: str | None = None
    nodes: int = 1  # a gang: this many pods of gpu_count GPUs each, on one cluster (gang.py)


def parse_gpus(gpus: str) -> tuple[str, int]:
    """'T4:2' -> ('T4', 2)."""
    m = _GPUS.match(str(gpus))
    if not m:
        raise PlacementError(
            f"gpus={gpus!r} is not of the form PRODUCT:COUNT; write e.g. gpus='T4:2'"
        )
    product, count = m.group(1), int(m.group(2))
    check_count(count)
    return product, count


def check_count(count: int) -> None:
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise PlacementError(f"GPU count must be a whole number >= 1, got {count!r}")


def check_nodes(nodes: int) -> None:
    if not isinstance(nodes, int) or isinstance(nodes, bool) or nodes < 1:
        raise PlacementError(f"nodes must be a whole number >= 1, got {nodes!r}")


def validate(request: Request, fleet: Fleet) -> None:
    """Checks that need only the fleet (done at DAG parse time when the fleet is known)."""
    check_count(request.gpu_count)
    check_nodes(request.nodes)
    try:
        fleet.org(request.org)  # who the org is, is identity.org_of's: never the request's
    except FleetError as exc:
        raise PlacementError(f"org={request.org!r}: {exc.problem}. Fix: {exc.fix}") from None
    products = fleet.products()
    if request.gpu_product not in products:
        raise PlacementError(
            f"GPU product {request.gpu_product!r} is offered by no cluster of {fleet.source} "
            f"(products: {', '.join(sorted(products))}). Fix: use one of them, or add it to a "
            "cluster's gpu_products"
        )


@dataclass(frozen=True)
class Row:
    """One line of the explanation table."""

    cluster: str
    owner: str
    tier: str
    free: str
    verdict: str  # a Verdict value
    reason: str


class Mode(str, enum.Enum):
    """How a candidate cluster would take the work."""

    NOW = "now"  # free GPUs, not claimed by pods waiting there
    RECLAIM = "reclaim"  # the owner's GPUs lent out: Kueue preempts the borrowers
    QUEUE = "queue"  # full: waits in Kueue's queue


class Verdict(str, enum.Enum):
    """A row of the explanation table."""

    CHOSEN = "chosen"
    CANDIDATE = "candidate"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Candidate:
    cluster: Cluster
    tier: Tier
    mode: Mode
    reason: str
    rank: tuple


@dataclass(frozen=True)
class Decision:
    request: Request
    candidates: tuple[Candidate, ...]  # best first; the submitter falls through on errors
    rows: tuple[Row, ...]

    @property
    def chosen(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None

    def trying_only(self, kept: tuple[Candidate, ...]) -> Decision:
        """Only the first candidates are tried (home-first: the others only after every
        cluster has been asked); the table says so rather than list them as fall-backs."""
        names = {c.cluster.name for c in kept}
        later = "tried only after every cluster is asked"
        rows = tuple(r if r.verdict == Verdict.SKIPPED.value or r.cluster in names else
                     replace(r, verdict=Verdict.SKIPPED.value,
                             reason=f"{r.reason.split(': ', 1)[-1]}; {later}")
                     for r in self.rows)
        return replace(self, candidates=kept, rows=rows)

    def table(self) -> str:
        return format_table(
            [[r.cluster, r.owner, r.tier, r.free, r.verdict, r.reason] for r in self.rows],
            ["cluster", "owner", "tier", "free", "decision", "why"],
        )

    def summary(self) -> str:
        """One readable log line per decision."""
        c = self.chosen
        unasked = sum(r.reason == NOT_ASKED for r in self.rows)
        skipped = "; ".join([*(f"{r.cluster}: {r.reason}" for r in self.rows
                               if r.verdict != Verdict.CHOSEN.value and r.reason != NOT_ASKED),
                             *([f"{unasked} other cluster(s) not asked"] if unasked else [])])
        if c is None:
            return f"no cluster can take {self._what()} ({skipped})"
        line = f"placing {self._what()} on {c.cluster.name} as {c.tier.name} ({c.reason})"
        return f"{line}; others: {skipped}" if skipped else line

    def _what(self) -> str:
        r = self.request
        gang = f"a gang of {r.nodes} x " if r.nodes > 1 else ""
        return f"{gang}{r.gpu_product}:{r.gpu_count} for org {r.org}"


_VANISHED = (Reason.DELETED.value, Reason.NOT_FOUND.value)
# The skip reason of a cluster a home-first probe did not ask (see home_candidates).
NOT_ASKED = "not asked: an owned cluster takes it"


def home(request: Request, fleet: Fleet) -> tuple[str, ...]:
    """The clusters a first placement asks first: the org's own with the product. Empty when
    that saves nothing (the org owns none, or every cluster that has the product)."""
    offering = [c for c in fleet.clusters.values() if request.gpu_product in c.gpu_products]
    owned = tuple(c.name for c in offering if c.owner == request.org)
    return owned if 0 < len(owned) < len(offering) else ()


def home_candidates(decision: Decision) -> tuple[Candidate, ...]:
    """The candidates of a home-first decision that no cluster left unasked could outrank:
    the owned ones taking the work now or by reclaiming their lent GPUs (ranks 0 and 1; a
    borrowed cluster ranks 2 or 4). A prefix of the candidates; empty when the rest of the
    fleet must be asked. Where it is not empty, a placement at home costs the owned
    clusters' probe, not the fleet's."""
    org = decision.request.org
    return tuple(itertools.takewhile(
        lambda c: c.cluster.owner == org and c.mode in (Mode.NOW, Mode.RECLAIM),
        decision.candidates))


def _cooldowns(history: Timeline, now: float, seconds: float) -> dict[str, float]:
    """Borrowed clusters that preempted this task recently -> seconds ago.

    A pod that vanished from a borrowed cluster before its preemption could be seen (Lost,
    deleted) counts too: on a borrowed cluster that is nearly always the owner taking it back.
    """
    out: dict[str, float] = {}
    for a in history.attempts:
        vanished = a.outcome == Kind.LOST.value and a.reason in _VANISHED
        taken = a.outcome == Kind.PREEMPTED.value or vanished
        if taken and a.tier == BORROWER and a.ended_at is not None:
            ago = now - a.ended_at
            if ago < seconds:
                out[a.cluster] = ago
    return out


def choose(
    request: Request,
    fleet: Fleet,
    snapshot: Snapshot,
    history: Timeline | None = None,
    now: float = 0.0,
    exclude: Iterable[str] | Mapping[str, str] = (),
    asked: Collection[str] = (),
) -> Decision:
    """Rank every cluster for the request. ``exclude``: clusters that just refused the pod
    (names, or a mapping name -> why, which the explanation then shows). ``asked``: the
    clusters the probe asked, when not all (the others are skipped as NOT_ASKED)."""
    validate(request, fleet)
    history = history or Timeline()
    excluded = (
        {k: str(v or "") for k, v in exclude.items()} if isinstance(exclude, Mapping)
        else dict.fromkeys(exclude, "")
    )
    owned_any = any(
        request.gpu_product in c.gpu_products for c in fleet.owned_by(request.org)
    )
    pinned = (
        owned_any
        and fleet.policy.pin_owned_after_preemptions > 0
        and history.preemptions >= fleet.policy.pin_owned_after_preemptions
    )
    if asked:
        excluded = {**dict.fromkeys(set(fleet.clusters) - set(asked), NOT_ASKED), **excluded}
    decision = _rank(request, fleet, snapshot, history, now, excluded, pinned, cooldown=True)
    if decision.candidates:
        return decision
    # Everything left was cooling down: waiting on one of them beats failing.
    relaxed = _rank(request, fleet, snapshot, history, now, excluded, pinned, cooldown=False)
    return relaxed if relaxed.candidates else decision


def _rank(
    request: Request,
    fleet: Fleet,
    snapshot: Snapshot,
    history: Timeline,
    now: float,
    excluded: dict[str, str],
    pinned: bool,
    cooldown: bool,
) -> Decision:
    cooling = _cooldowns(history, now, fleet.policy.borrow_cooldown_seconds) if cooldown else {}
    candidates: list[Candidate] = []
    skipped: dict[str, str] = {}
    cells: dict[str, tuple[str, str]] = {}
    need = request.gpu_count
    for cluster in fleet.clusters.values():
        owner = cluster.owner == request.org
        tier = cluster.tier(OWNER if owner else BORROWER)
        cap = snapshot.get(cluster.name)
        label = cluster.gpu_products.get(request.gpu_product)
        cells[cluster.name] = (tier.name, "-")
        if label is None:
            skipped[cluster.name] = f"has no {request.gpu_product}"
            continue
        if cap.reachable:
            cells[cluster.name] = (tier.name, f"{cap.free(label)}/{cap.total(label)}")
        reason = (_skip_reason(cluster, owner, cap, label, need, excluded, cooling, pinned)
                  or _gang_skip(request, cap, label))
        if reason:
            skipped[cluster.name] = reason
            continue
        candidates.append(_gang_candidate(cluster, tier, owner, cap, label, request)
                          if request.nodes > 1 else
                          _candidate(cluster, tier, owner, cap, label, need, request.gpu_count))
    if not candidates:
        _never_fits(request, fleet, snapshot)
    candidates.sort(key=lambda c: c.rank)
    return Decision(request, tuple(candidates), _rows(fleet, candidates, skipped, cells))


def _never_fits(request: Request, fleet: Fleet, snapshot: Snapshot) -> None:
    """Every cluster answered and no node of the product is large enough: waiting is futile."""
    if any(not snapshot.get(c).reachable for c in fleet.clusters):
        return
    products = [(c, label) for c in fleet.clusters.values()
                if (label := c.gpu_products.get(request.gpu_product)) is not None]
    sizes = [n.allocatable for c, label in products for n in snapshot.get(c.name).nodes_of(label)]
    largest, need = max(sizes, default=0), request.gpu_count
    rooms = [gang.room(snapshot.get(c.name).nodes_of(label), need) for c, label in products]
    if largest >= need and request.nodes > max(rooms, default=0):
        raise PlacementError(
            f"a gang of {request.nodes} x {request.gpu_product}:{need} needs {request.nodes} "
            f"such nodes on one cluster, but no cluster of the fleet has more than "
            f"{max(rooms, default=0)}. Fix: ask for at most {max(rooms, default=0)} nodes")
    if largest and largest < need:
        raise PlacementError(
            f"{request.gpu_product}:{need} needs {need} GPUs on one node, but the largest "
            f"{request.gpu_product} node in the fleet has {largest}. Fix: ask for at most {largest}"
        )


def _rows(fleet: Fleet, candidates: list[Candidate], skipped: dict[str, str],
          cells: dict[str, tuple[str, str]]) -> tuple[Row, ...]:
    """The explanation table: candidates best first, then the skipped clusters."""
    rows = []
    for i, c in enumerate(candidates):
        tier_name, free = cells[c.cluster.name]
        verdict = Verdict.CHOSEN if i == 0 else Verdict.CANDIDATE
        why = c.reason if i == 0 else f"#{i + 1}: {c.reason}"
        rows.append(Row(c.cluster.name, c.cluster.owner, tier_name, free, verdict.value, why))
    for name, reason in skipped.items():
        tier_name, free = cells[name]
        rows.append(Row(name, fleet.clusters[name].owner, tier_name, free,
                        Verdict.SKIPPED.value, reason))
    return tuple(rows)


def _skip_reason(
    cluster: Cluster,
    owner: bool,
    cap: ClusterCapacity,
    label: str,
    need: int,
    excluded: dict[str, str],
    cooling: dict[str, float],
    pinned: bool,
) -> str:
    if cluster.name in excluded:
        return excluded[cluster.name] or "refused the pod just now"
    if not owner and not cluster.lend:
        return "does not lend to other orgs (lend: false)"
    if pinned and not owner:
        return "task pinned to owned clusters after repeated preemptions"
    if not cap.reachable:
        return f"unreachable: {cap.error}"
    nodes = cap.nodes_of(label)
    if not nodes:
        return f"no ready {label} node"
    if max(n.allocatable for n in nodes) < need:
        return f"largest {label} node has {max(n.allocatable for n in nodes)} GPUs, need {need}"
    if not owner and cluster.name in cooling:
        return f"preempted this task {cooling[cluster.name]:.0f}s ago (cooldown)"
    return ""


def _candidate(
    cluster: Cluster, tier: Tier, owner: bool, cap: ClusterCapacity, label: str, need: int,
    count: int,
) -> Candidate:
    nodes = cap.nodes_of(label)
    cost = cluster.cost_per_gpu_hour if cluster.cost_per_gpu_hour is not None else float("inf")
    free = cap.free(label)
    # Pods already waiting there (gated by Kueue, or admitted and not yet bound) take the free
    # GPUs before a new pod would: count them, or two tasks placed a moment apart both "fit".
    pending = cap.pending(label)
    unclaimed = free - pending
    if any(n.free >= need for n in nodes) and unclaimed >= need:
        group = 0 if owner else 2
        waiting = f", {pending} claimed by pods waiting there" if pending else ""
        reason = f"{'owns' if owner else 'borrows'} it; {free} {label} free{waiting}"
        return Candidate(cluster, tier, Mode.NOW, reason, (group, -unclaimed, cost, cluster.name))
    reclaim = min(
        (need - n.free for n in nodes
         if owner and n.borrowed and n.free < need <= n.free + n.borrowed), default=None
    )
    if reclaim is not None:
        reason = f"owns it; reclaims {reclaim} GPU(s) lent to other orgs (Kueue preempts them)"
        return Candidate(cluster, tier, Mode.RECLAIM, reason, (1, reclaim, cost, cluster.name))
    group = 3 if owner else 4
    reason = (
        f"full; queues as {tier.name} behind {pending} pending GPU(s)"
        if pending
        else f"full; queues as {tier.name} (no queue ahead)"
    )
    return Candidate(cluster, tier, Mode.QUEUE, reason, (group, pending, cost, cluster.name))


# -- a gang (nodes > 1): the whole gang on one cluster, or not there ------------------------
def _gang_skip(request: Request, cap: ClusterCapacity, label: str) -> str:
    """A cluster that could never hold every member at once (counting all its GPUs)."""
    if request.nodes <= 1:
        return ""
    room = gang.room(cap.nodes_of(label), request.gpu_count)
    if room >= request.nodes:
        return ""
    return (f"cannot take the whole gang: room for {room} of {request.nodes} members "
            f"({label} nodes with {request.gpu_count} GPUs each)")


def _gang_candidate(cluster: Cluster, tier: Tier, owner: bool, cap: ClusterCapacity, label: str,
                    request: Request) -> Candidate:
    """As _candidate, counting members: the gang runs now only if every member fits now
    (Kueue admits all of it or none)."""
    nodes, need, size = cap.nodes_of(label), request.gpu_count, request.nodes
    cost = cluster.cost_per_gpu_hour if cluster.cost_per_gpu_hour is not None else float("inf")
    now, pending = gang.slots(nodes, need), cap.pending(label)
    unclaimed = cap.free(label) - pending
    if now >= size and unclaimed >= need * size:
        reason = (f"{'owns' if owner else 'borrows'} it; all {size} gang members fit now "
                  f"({cap.free(label)} {label} free)")
        return Candidate(cluster, tier, Mode.NOW, reason,
                         (0 if owner else 2, -unclaimed, cost, cluster.name))
    if owner and gang.slots(nodes, need, borrowed=True) >= size:
        reason = (f"owns it; {now} of {size} gang members fit now, the rest on GPUs lent to "
                  "other orgs (Kueue preempts them)")
        return Candidate(cluster, tier, Mode.RECLAIM, reason,
                         (1, need * size - max(0, unclaimed), cost, cluster.name))
    reason = (f"cannot take the whole gang now ({now} of {size} members fit); queues as "
              f"{tier.name}, all members admitted together, behind {pending} pending GPU(s)")
    return Candidate(cluster, tier, Mode.QUEUE, reason,
                     (3 if owner else 4, pending, cost, cluster.name))
