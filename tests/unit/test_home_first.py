"""A first placement asks the org's own clusters first (placement.home, home_candidates):
where one of them takes the work now, the borrowed clusters could not rank above it, so they
are never asked (benchmark (i): 20 clusters cost one cluster's probe).

The rule's soundness is checked exhaustively: over every combination of a small fleet's
capacities, whenever the home probe settles, the whole fleet's decision is the same.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from dataclasses import replace

import pytest

from airflow_provider_skyshare import capacity, placement
from airflow_provider_skyshare.cluster_api import KubeClusterApi
from airflow_provider_skyshare.fleet import parse
from airflow_provider_skyshare.follow import (
    Create,
    CreateAnswer,
    Created,
    CreateFailed,
    Finish,
    Follow,
    Job,
    Note,
    Phase,
    Probe,
    Probed,
    Settings,
    Start,
    first_probe,
    step,
)
from airflow_provider_skyshare.names import Kind
from airflow_provider_skyshare.placement import NOT_ASKED, Request
from airflow_provider_skyshare.pods import TaskIdentity
from airflow_provider_skyshare.snapshot import ClusterCapacity, NodeGpus, Snapshot
from airflow_provider_skyshare.timeline import Attempt, Timeline

T0 = 1_800_000_000.0
NAMES = ("rise", "rise2", "bair", "p3")
OWNERS = {"rise": "rise", "rise2": "rise", "bair": "bair", "p3": "bair"}


def fleet(names=NAMES, owners=OWNERS):
    return parse({
        "defaults": {"gpu_products": {"T4": "Tesla-T4"}},
        "orgs": [{"name": "rise", "members": ["romil"]}, {"name": "bair", "members": ["abbeel"]}],
        "clusters": [{"name": n, "owner": owners[n], "context": f"{n}-ctx",
                      "cost_per_gpu_hour": 0.35} for n in names],
    }, source="fleet.yaml")


def cap(name: str, used: int, borrowed: int = 0, pending: int = 0) -> ClusterCapacity:
    return ClusterCapacity(name, True, nodes=(NodeGpus(f"{name}-gpu-0", "Tesla-T4", 2, used,
                                                       borrowed),), pending_gpus=pending)


def only(snapshot: Snapshot, names) -> Snapshot:
    return Snapshot({n: c for n, c in snapshot.clusters.items() if n in names})


# one node of 2 T4s: (used, borrowed of the used, pending), or None: unreachable
STATES = [(0, 0, 0), (1, 0, 0), (2, 0, 0), (2, 2, 0), (1, 1, 0), (0, 0, 2), (2, 0, 1), None]


def snapshots():
    for combo in itertools.product(STATES, repeat=len(NAMES)):
        yield Snapshot({n: (cap(n, *s) if s is not None else ClusterCapacity(n, False, "down"))
                        for n, s in zip(NAMES, combo, strict=True)})


@pytest.mark.parametrize("gpus", [1, 2])
def test_whenever_home_settles_the_whole_fleet_decides_the_same(gpus):
    f, request = fleet(), Request("T4", gpus, "rise", "romil")
    home = placement.home(request, f)
    assert home == ("rise", "rise2")
    settled = 0
    for full in snapshots():
        at_home = placement.home_candidates(
            placement.choose(request, f, only(full, home), asked=home))
        if not at_home:
            continue
        settled += 1
        everywhere = placement.choose(request, f, full).candidates
        # the choice, and the order the submitter falls through on refusals
        assert at_home == everywhere[:len(at_home)], full
    assert settled > 100  # the rule is not vacuous


def test_and_over_random_fleets_with_gangs_refusals_history_and_lending():
    """Seeded: 2-5 clusters, two products, lend: false, unreachable clusters, several nodes
    with lent GPUs, pending pods, gangs, refusals, pinning and cooldowns from past attempts."""
    rnd, settled = random.Random(1), 0
    for _ in range(3000):
        names = [f"c{i}" for i in range(rnd.randint(2, 5))]
        owners = {c: rnd.choice(["rise", "bair"]) for c in names}
        products = {c: rnd.choice([{"T4": "Tesla-T4"}, {"T4": "Tesla-T4", "A100": "A100"},
                                   {"A100": "A100"}]) for c in names}
        f = parse({"orgs": [{"name": "rise", "members": ["u"]}, {"name": "bair", "members": ["v"]}],
                   "policy": {"pin_owned_after_preemptions": rnd.choice([0, 1, 2])},
                   "clusters": [{"name": c, "owner": owners[c], "context": c,
                                 "gpu_products": products[c], "lend": rnd.random() < .8,
                                 "cost_per_gpu_hour": rnd.choice([0.1, 0.3, None])}
                                for c in names]}, source="x")
        request = Request(rnd.choice(["T4", "A100"]), rnd.randint(1, 4), "rise", "u",
                          nodes=rnd.choice([1, 1, 2, 3]))
        home = placement.home(request, f)
        try:
            placement.validate(request, f)
        except placement.PlacementError:
            continue
        if not home:
            continue
        caps = {c: _random_capacity(rnd, c, products[c]) for c in names}
        history = Timeline(tuple(
            Attempt(k + 1, c, "owner" if owners[c] == "rise" else "borrower", f"p{k}", "ns",
                    0.0, ended_at=rnd.choice([None, 90.0, 10.0]),
                    outcome=rnd.choice([Kind.PREEMPTED.value, "Succeeded", Kind.LOST.value]),
                    reason=rnd.choice(["", "Deleted"]))
            for k, c in enumerate(rnd.choice(names) for _ in range(rnd.randint(0, 3)))))
        refused = {c: "refused" for c in names if rnd.random() < .2}
        at_home = placement.home_candidates(placement.choose(
            request, f, Snapshot({c: caps[c] for c in home}), history, now=100.0,
            exclude=refused, asked=home))
        if not at_home:
            continue
        settled += 1
        everywhere = placement.choose(request, f, Snapshot(caps), history, now=100.0,
                                      exclude=refused).candidates
        assert at_home == everywhere[:len(at_home)], (request, caps, refused, history)
    assert settled > 300


def _random_capacity(rnd: random.Random, name: str, products: dict[str, str]) -> ClusterCapacity:
    if rnd.random() < .15:
        return ClusterCapacity(name, False, "down")
    nodes = []
    for j in range(rnd.randint(0, 3)):
        for label in products.values():
            size = rnd.choice([2, 4, 8])
            used = rnd.randint(0, size)
            nodes.append(NodeGpus(f"{name}-{j}-{label}", label, size, used, rnd.randint(0, used)))
    return ClusterCapacity(name, True, nodes=tuple(nodes), pending_gpus=rnd.choice([0, 0, 1, 4]))


@pytest.mark.parametrize(("rise", "settles"), [
    ((0, 0, 0), True),  # free now
    ((2, 2, 0), True),  # full of borrowers: reclaims (Kueue preempts them)
    ((2, 0, 0), False),  # full of its own work: a borrowed cluster may run it now
    ((0, 0, 2), False),  # free, but claimed by pods waiting there
    (None, False),  # unreachable
])
def test_home_settles_only_when_an_owned_cluster_takes_it_now_or_by_reclaiming(rise, settles):
    f = fleet(("rise", "bair"))
    request = Request("T4", 2, "rise", "romil")
    snapshot = Snapshot({"rise": cap("rise", *rise) if rise else ClusterCapacity("rise", False,
                                                                                 "down")})
    decision = placement.choose(request, f, snapshot, asked=("rise",))
    assert bool(placement.home_candidates(decision)) is settles


def test_home_is_empty_when_asking_it_first_saves_nothing():
    owns_all = fleet(("rise", "rise2"))
    assert placement.home(Request("T4", 1, "rise", "romil"), owns_all) == ()
    assert placement.home(Request("T4", 1, "rise", "romil"), fleet(("bair", "p3"))) == ()
    assert placement.home(Request("A100", 1, "rise", "romil"), fleet()) == ()  # none has it


def test_the_clusters_not_asked_are_named_so_and_summed_up_in_the_log_line():
    f, request = fleet(), Request("T4", 1, "rise", "romil")
    decision = placement.choose(request, f, Snapshot({"rise": cap("rise", 0)}),
                                asked=("rise", "rise2"))
    reasons = {r.cluster: r.reason for r in decision.rows}
    assert reasons["bair"] == reasons["p3"] == NOT_ASKED
    assert "unreachable" in reasons["rise2"]  # asked, and did not answer
    assert decision.summary().endswith("2 other cluster(s) not asked")
    assert "bair:" not in decision.summary()


# -- the follow loop -------------------------------------------------------------------------
def make(f=None) -> Follow:
    job = Job(f or fleet(), Request("T4", 2, "rise", "romil"), {"spec": {"containers": [
        {"name": "base", "image": "busybox"}]}}, TaskIdentity("dag", "train", "run-1", 1),
        Settings())
    return Follow(job)


def kinds(actions) -> list[type]:
    return [type(a) for a in actions if not isinstance(a, Note)]


def the(actions, kind):
    found = [a for a in actions if isinstance(a, kind)]
    assert len(found) == 1, actions
    return found[0]


def test_a_first_placement_with_room_at_home_never_asks_the_borrowed_clusters():
    state, actions = step(make(), Start(), T0)
    assert the(actions, Probe) == Probe(clusters=("rise", "rise2")) == first_probe(state)
    state, actions = step(state, Probed(only(SEEN, ("rise", "rise2")), asked=("rise", "rise2")),
                          T0)
    assert kinds(actions) == [Create] and the(actions, Create).cluster == "rise2"
    # rise (full of its own work) is no fall-back: bair, not asked, may outrank it
    assert state.home_only and [c.cluster.name for c in state.candidates] == ["rise2"]
    state, _ = step(state, Created("rise2"), T0 + 0.1)
    assert state.phase is Phase.WATCHING


SEEN = Snapshot({"rise": cap("rise", 2), "rise2": cap("rise2", 0), "bair": cap("bair", 0),
                 "p3": cap("p3", 0)})


def test_a_full_home_asks_the_other_clusters_and_places_as_the_whole_fleet_says():
    full_home = replace(SEEN, clusters={**SEEN.clusters, "rise2": cap("rise2", 2)})
    state, _ = step(make(), Start(), T0)
    state, actions = step(state, Probed(only(full_home, ("rise", "rise2")),
                                        asked=("rise", "rise2")), T0)
    assert kinds(actions) == [Probe] and the(actions, Probe) == Probe(clusters=("bair", "p3"))
    assert "asking the other clusters" in the(actions, Note).text
    state, actions = step(state, Probed(only(full_home, ("bair", "p3")),
                                        asked=("bair", "p3")), T0)
    assert the(actions, Create).cluster == "bair" and not state.home_only
    # the home's answers are kept: its clusters are in the table, as full
    table = next(a.text for a in actions if isinstance(a, Note) and "placement of" in a.text)
    rows = {line.split()[0]: line for line in table.splitlines()[3:]}
    assert "0/2" in rows["rise"] and "0/2" in rows["rise2"], table  # answered, full


def test_a_silent_home_is_not_asked_twice():
    """An owned cluster that does not answer costs one probe deadline, not two."""
    silent = Snapshot({"rise": ClusterCapacity("rise", False, "timed out"),
                       "rise2": cap("rise2", 2)})
    state, _ = step(make(), Start(), T0)
    state, actions = step(state, Probed(silent, asked=("rise", "rise2")), T0)
    assert the(actions, Probe).clusters == ("bair", "p3")
    state, actions = step(state, Probed(only(SEEN, ("bair", "p3")), asked=("bair", "p3")), T0)
    assert the(actions, Create).cluster in ("bair", "p3") and state.transient


def test_owned_candidates_that_only_queue_are_not_offered_as_fall_backs():
    """rise2 free, rise full of its own work: only rise2 is tried before every cluster is
    asked (a borrowed cluster that runs the work now ranks above queueing at home)."""
    state, _ = step(make(), Start(), T0)
    state, actions = step(state, Probed(only(SEEN, ("rise", "rise2")), asked=("rise", "rise2")),
                          T0)
    table = next(a.text for a in actions if isinstance(a, Note) and "placement of" in a.text)
    rise_row = next(line for line in table.splitlines() if line.startswith("rise "))
    assert "skipped" in rise_row and "tried only after every cluster is asked" in rise_row


def test_a_home_that_refuses_the_pod_asks_every_cluster_instead_of_giving_up():
    state, _ = step(make(), Start(), T0)
    state, _ = step(state, Probed(only(SEEN, ("rise", "rise2")), asked=("rise", "rise2")), T0)
    state, actions = step(state, CreateFailed("rise2", CreateAnswer.REFUSED,
                                              "admission webhook denied it"), T0)
    assert kinds(actions) == [Probe] and the(actions, Probe) == Probe()
    assert not [a for a in actions if isinstance(a, Finish)]
    state, actions = step(state, Probed(SEEN), T0)
    created = the(actions, Create).cluster
    assert created in ("bair", "p3")  # rise2 refused it this round; rise is full


# -- the shell: the early probe is the home probe ----------------------------------------------
def test_the_worker_early_probe_asks_what_the_first_probe_asks(monkeypatch):
    asked: list[tuple[str, ...]] = []

    async def probe_after(f, run=None):
        asked.append(tuple(f.clusters))
        return Snapshot()

    monkeypatch.setattr(capacity, "probe_after", probe_after)

    async def main():
        api = KubeClusterApi(fleet(), "key")
        async with api.probing_early(("rise", "rise2")):
            await api.probe(False, ("rise", "rise2"))  # the early one, not a second
            await api.probe(False)  # every cluster: its own probe
        async with api.probing_early(("rise",)):
            await api.probe(False)  # not what was started early: that one is dropped

    asyncio.run(main())
    # the dropped one may be cancelled before it starts
    assert asked[:2] == [("rise", "rise2"), NAMES] and asked[-1] == NAMES, asked
