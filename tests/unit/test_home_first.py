"""A first placement asks the org's own clusters first (placement.home, home_candidates):
where one of them takes the work now, the borrowed clusters could not rank above it, so they
are never asked (benchmark (i): 20 clusters cost one cluster's probe).

The rule's soundness is checked exhaustively: over every combination of a small fleet's
capacities, whenever the home probe settles, the whole fleet's decision is the same.
"""

from __future__ import annotations

import asyncio
import itertools
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
from airflow_provider_skyshare.placement import NOT_ASKED, Request
from airflow_provider_skyshare.pods import TaskIdentity
from airflow_provider_skyshare.snapshot import ClusterCapacity, NodeGpus, Snapshot

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


def test_a_full_home_asks_every_cluster_and_places_as_the_whole_fleet_says():
    full_home = replace(SEEN, clusters={**SEEN.clusters, "rise2": cap("rise2", 2)})
    state, _ = step(make(), Start(), T0)
    state, actions = step(state, Probed(only(full_home, ("rise", "rise2")),
                                        asked=("rise", "rise2")), T0)
    assert kinds(actions) == [Probe] and the(actions, Probe) == Probe()
    assert "asking every cluster" in the(actions, Note).text
    state, actions = step(state, Probed(full_home), T0)
    assert the(actions, Create).cluster == "bair" and not state.home_only


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
