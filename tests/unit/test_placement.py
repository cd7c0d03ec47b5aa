"""The placement rule: owner first, reclaim, borrow, queue; cooldown, pinning and refusals."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from airflow_provider_skyshare.fleet import BORROWER, OWNER, Fleet, parse
from airflow_provider_skyshare.placement import (
    Decision,
    PlacementError,
    Request,
    choose,
    parse_gpus,
    validate,
)
from airflow_provider_skyshare.snapshot import ClusterCapacity, NodeGpus, Snapshot
from airflow_provider_skyshare.timeline import Attempt, Timeline

NOW = 1_800_000_000.0
DOWN = "down"


def fleet(*clusters: dict[str, Any], orgs: list[dict[str, Any]] | None = None,
          policy: dict[str, Any] | None = None) -> Fleet:
    """Default: the seed scenario (rise and bair, one 2xT4 cluster each, same cost)."""
    if not clusters:
        clusters = ({"name": "rise", "owner": "rise", "cost_per_gpu_hour": 0.35},
                    {"name": "bair", "owner": "bair", "cost_per_gpu_hour": 0.35})
    return parse({
        "defaults": {"gpu_products": {"T4": "Tesla-T4"}},
        "policy": policy or {"borrow_cooldown_seconds": 300, "pin_owned_after_preemptions": 2},
        "orgs": orgs or [{"name": "rise", "members": ["romil"]},
                         {"name": "bair", "members": ["abbeel"]}],
        "clusters": [{"context": f"{c['name']}-ctx", **c} for c in clusters],
    }, source="fleet.yaml")


def snap(**clusters: Any) -> Snapshot:
    """cluster=[(allocatable, used, borrowed), ...] per Tesla-T4 node, or DOWN, or
    {"nodes": [...], "pending": n, "product": label}."""
    caps = {}
    for name, spec in clusters.items():
        if spec == DOWN:
            caps[name] = ClusterCapacity(name, False, "connection refused")
            continue
        if isinstance(spec, list):
            spec = {"nodes": spec}
        label = spec.get("product", "Tesla-T4")
        nodes = tuple(NodeGpus(f"{name}-gpu-{i}", label, *n) for i, n in enumerate(spec["nodes"]))
        caps[name] = ClusterCapacity(name, True, nodes=nodes, pending_gpus=spec.get("pending", 0))
    return Snapshot(caps, taken_at=NOW)


def preempted(cluster: str, tier: str = BORROWER, ago: float = 5.0, number: int = 1,
              outcome: str = "Preempted") -> Attempt:
    return Attempt(number=number, cluster=cluster, tier=tier, pod=f"p-a{number}",
                   namespace="skyshare", placed_at=NOW - ago - 60, started_at=NOW - ago - 50,
                   ended_at=NOW - ago, outcome=outcome, reason="WorkloadEvictedDueToPreempted")


def order(decision: Decision) -> list[tuple[str, str, str]]:
    return [(c.cluster.name, c.tier.name, c.mode) for c in decision.candidates]


def skipped(decision: Decision) -> dict[str, str]:
    return {r.cluster: r.reason for r in decision.rows if r.verdict == "skipped"}


ROMIL = Request("T4", 2, "rise", "romil")
ABBEEL = Request("T4", 2, "bair", "abbeel")

# -- the seed scenario, step by step ---------------------------------------------------------

SEED_STEPS = [
    pytest.param(
        ROMIL, snap(rise=[(2, 0, 0)], bair=[(2, 0, 0)]), Timeline(),
        [("rise", OWNER, "now"), ("bair", BORROWER, "now")], {},
        id="1-romil-on-own-rise-as-owner"),
    pytest.param(
        ROMIL, snap(rise=[(2, 2, 0)], bair=[(2, 0, 0)]), Timeline(),
        [("bair", BORROWER, "now"), ("rise", OWNER, "queue")], {},
        id="2-romil-train-borrows-bair-while-rise-is-full"),
    pytest.param(
        ROMIL, snap(rise={"nodes": [(2, 0, 0)], "pending": 2}, bair=[(2, 0, 0)]), Timeline(),
        [("bair", BORROWER, "now"), ("rise", OWNER, "queue")], {},
        id="2b-romil-train-while-romil-still-waits-for-admission-on-rise"),
    pytest.param(
        ABBEEL, snap(rise=[(2, 2, 0)], bair=[(2, 2, 2)]), Timeline(),
        [("bair", OWNER, "reclaim"), ("rise", BORROWER, "queue")], {},
        id="3-abbeel-reclaims-own-bair-from-rise"),
    pytest.param(
        ROMIL, snap(rise=[(2, 2, 0)], bair=[(2, 2, 0)]), Timeline((preempted("bair"),)),
        [("rise", OWNER, "queue")], {"bair": "preempted this task 5s ago (cooldown)"},
        id="4-romil-train-after-preemption-queues-on-rise"),
    pytest.param(
        ROMIL, snap(rise=[(2, 2, 0)], bair=[(2, 0, 0)]), Timeline((preempted("bair", ago=120),)),
        [("rise", OWNER, "queue")], {"bair": "preempted this task 120s ago (cooldown)"},
        id="4b-cooldown-holds-even-when-bair-is-free-again"),
]


@pytest.mark.parametrize(("request_", "snapshot", "history", "expected", "skips"), SEED_STEPS)
def test_seed_scenario(request_: Request, snapshot: Snapshot, history: Timeline,
                       expected: list[tuple[str, str, str]], skips: dict[str, str]) -> None:
    decision = choose(request_, fleet(), snapshot, history, now=NOW)
    assert order(decision) == expected
    assert skipped(decision) == skips
    chosen = decision.chosen
    assert chosen is not None
    # the tier's Kueue wiring is the chosen cluster's, for the tier of the ownership
    assert chosen.tier == chosen.cluster.tier(OWNER if chosen.cluster.owner == request_.org
                                              else BORROWER)


def test_seed_reasons_read_well() -> None:
    step2 = choose(ROMIL, fleet(), snap(rise=[(2, 2, 0)], bair=[(2, 0, 0)]), now=NOW)
    assert step2.chosen is not None
    assert step2.chosen.reason == "borrows it; 2 Tesla-T4 free"
    assert step2.candidates[1].reason == "full; queues as owner (no queue ahead)"
    step3 = choose(ABBEEL, fleet(), snap(rise=[(2, 2, 0)], bair=[(2, 2, 2)]), now=NOW)
    assert step3.chosen is not None
    assert step3.chosen.reason == ("owns it; reclaims 2 GPU(s) lent to other orgs "
                                   "(Kueue preempts them)")


# -- ordering inside and across groups -------------------------------------------------------

ORDER_CASES = [
    pytest.param(
        [{"name": "mine", "owner": "rise"}, {"name": "theirs", "owner": "bair"}],
        Request("T4", 1, "rise", "romil"), snap(mine=[(2, 1, 0)], theirs=[(8, 0, 0)]),
        ["mine", "theirs"], id="owned-before-borrowed-even-with-less-free"),
    pytest.param(
        [{"name": "mine", "owner": "rise"}, {"name": "theirs", "owner": "bair"}],
        Request("T4", 2, "rise", "romil"), snap(mine=[(2, 2, 2)], theirs=[(8, 0, 0)]),
        ["mine", "theirs"], id="owned-reclaim-before-borrowed-now"),
    pytest.param(
        [{"name": "mine", "owner": "rise"}, {"name": "theirs", "owner": "bair"}],
        Request("T4", 2, "rise", "romil"), snap(mine=[(2, 2, 0)], theirs=[(2, 2, 0)]),
        ["mine", "theirs"], id="queue-owned-before-queue-borrowed"),
    pytest.param(
        [{"name": "mine", "owner": "rise"}, {"name": "theirs", "owner": "bair"}],
        Request("T4", 2, "rise", "romil"),
        snap(mine={"nodes": [(2, 2, 0)], "pending": 6}, theirs=[(2, 2, 0)]),
        ["mine", "theirs"], id="owned-queue-first-even-if-longer"),
    pytest.param(
        [{"name": "a", "owner": "rise"}, {"name": "b", "owner": "rise"}],
        Request("T4", 1, "rise", "romil"), snap(a=[(4, 2, 0)], b=[(4, 0, 0)]),
        ["b", "a"], id="most-free-gpus-first"),
    pytest.param(
        [{"name": "a", "owner": "bair"}, {"name": "b", "owner": "bair"}],
        Request("T4", 1, "rise", "romil"), snap(a=[(2, 1, 0)], b=[(2, 0, 0), (2, 0, 0)]),
        ["b", "a"], id="most-free-gpus-first-among-borrowed-counting-all-nodes"),
    pytest.param(
        [{"name": "a", "owner": "rise", "cost_per_gpu_hour": 2.0},
         {"name": "b", "owner": "rise", "cost_per_gpu_hour": 0.5}],
        Request("T4", 1, "rise", "romil"), snap(a=[(2, 0, 0)], b=[(2, 0, 0)]),
        ["b", "a"], id="cost-breaks-free-tie"),
    pytest.param(
        [{"name": "a", "owner": "rise", "cost_per_gpu_hour": 2.0},
         {"name": "b", "owner": "rise", "cost_per_gpu_hour": 0.5}],
        Request("T4", 1, "rise", "romil"), snap(a=[(4, 0, 0)], b=[(2, 0, 0)]),
        ["a", "b"], id="free-gpus-beat-cost"),
    pytest.param(
        [{"name": "priced", "owner": "rise", "cost_per_gpu_hour": 99.0},
         {"name": "unpriced", "owner": "rise"}],
        Request("T4", 1, "rise", "romil"), snap(priced=[(2, 0, 0)], unpriced=[(2, 0, 0)]),
        ["priced", "unpriced"], id="unknown-cost-sorts-last"),
    pytest.param(
        [{"name": "zeta", "owner": "rise"}, {"name": "alpha", "owner": "rise"},
         {"name": "mid", "owner": "rise"}],
        Request("T4", 1, "rise", "romil"),
        snap(zeta=[(2, 0, 0)], alpha=[(2, 0, 0)], mid=[(2, 0, 0)]),
        ["alpha", "mid", "zeta"], id="name-breaks-full-tie"),
    pytest.param(
        [{"name": "a", "owner": "rise"}, {"name": "b", "owner": "rise"}],
        Request("T4", 2, "rise", "romil"), snap(a=[(2, 2, 2)], b=[(2, 1, 1)]),
        ["b", "a"], id="smallest-reclaim-first"),
    pytest.param(
        [{"name": "a", "owner": "bair"}, {"name": "b", "owner": "bair"}],
        Request("T4", 2, "rise", "romil"),
        snap(a={"nodes": [(2, 2, 0)], "pending": 4}, b={"nodes": [(2, 2, 0)], "pending": 2}),
        ["b", "a"], id="shortest-queue-first"),
    pytest.param(
        [{"name": "a", "owner": "rise", "cost_per_gpu_hour": 1.0},
         {"name": "b", "owner": "rise", "cost_per_gpu_hour": 0.1}],
        Request("T4", 2, "rise", "romil"), snap(a=[(2, 2, 0)], b=[(2, 2, 0)]),
        ["b", "a"], id="cost-breaks-queue-tie"),
]


@pytest.mark.parametrize(("clusters", "request_", "snapshot", "expected"), ORDER_CASES)
def test_ordering(clusters: list[dict[str, Any]], request_: Request, snapshot: Snapshot,
                  expected: list[str]) -> None:
    decision = choose(request_, fleet(*clusters), snapshot, now=NOW)
    assert [c.cluster.name for c in decision.candidates] == expected


def test_fragmented_free_gpus_do_not_count_as_free_now() -> None:
    """Two nodes with one free GPU each cannot run a 2-GPU pod now (one pod, one node)."""
    f = fleet({"name": "rise", "owner": "rise"})
    decision = choose(ROMIL, f, snap(rise=[(2, 1, 0), (2, 1, 0)]), now=NOW)
    assert order(decision) == [("rise", OWNER, "queue")]
    assert decision.rows[0].free == "2/4"


def test_partial_reclaim_counts_free_plus_borrowed_on_one_node() -> None:
    f = fleet({"name": "rise", "owner": "rise"})
    decision = choose(ROMIL, f, snap(rise=[(2, 2, 1)]), now=NOW)
    assert order(decision) == [("rise", OWNER, "queue")]  # 0 free + 1 borrowed < 2
    decision = choose(ROMIL, f, snap(rise=[(4, 3, 1)]), now=NOW)
    assert order(decision) == [("rise", OWNER, "reclaim")]  # 1 free + 1 borrowed
    assert "reclaims 1 GPU(s)" in decision.candidates[0].reason


def test_gpus_claimed_by_waiting_pods_are_not_free() -> None:
    """Free GPUs that pods already waiting on the cluster will take do not count as free."""
    f = fleet({"name": "rise", "owner": "rise"})
    decision = choose(ROMIL, f, snap(rise={"nodes": [(4, 0, 0)], "pending": 2}), now=NOW)
    assert order(decision) == [("rise", OWNER, "now")]
    assert decision.candidates[0].reason == "owns it; 4 Tesla-T4 free, 2 claimed by pods waiting there"
    decision = choose(ROMIL, f, snap(rise={"nodes": [(4, 0, 0)], "pending": 3}), now=NOW)
    assert order(decision) == [("rise", OWNER, "queue")]


def test_borrowers_never_reclaim() -> None:
    """Only the owner's tier preempts; a borrower facing borrowed work just queues."""
    decision = choose(ROMIL, fleet(), snap(rise=DOWN, bair=[(2, 2, 2)]), now=NOW)
    assert order(decision) == [("bair", BORROWER, "queue")]


def test_queue_when_nothing_is_free() -> None:
    f = fleet()
    decision = choose(ROMIL, f, snap(rise={"nodes": [(2, 2, 0)], "pending": 2},
                                     bair={"nodes": [(2, 2, 0)], "pending": 0}), now=NOW)
    assert order(decision) == [("rise", OWNER, "queue"), ("bair", BORROWER, "queue")]
    assert decision.candidates[0].reason == "full; queues as owner behind 2 pending GPU(s)"
    assert decision.candidates[1].reason == "full; queues as borrower (no queue ahead)"


# -- exclusion, cooldown and pinning ---------------------------------------------------------


def test_excluded_cluster_is_skipped() -> None:
    decision = choose(ROMIL, fleet(), snap(rise=[(2, 0, 0)], bair=[(2, 0, 0)]), now=NOW,
                      exclude=["rise"])
    assert order(decision) == [("bair", BORROWER, "now")]
    assert skipped(decision) == {"rise": "refused the pod just now"}


def test_excluded_with_reasons_shows_them() -> None:
    decision = choose(ROMIL, fleet(), snap(rise=[(2, 0, 0)], bair=[(2, 0, 0)]), now=NOW,
                      exclude={"rise": "refused the pod (HTTP 403): forbidden"})
    assert skipped(decision) == {"rise": "refused the pod (HTTP 403): forbidden"}


def test_all_excluded_gives_no_candidates() -> None:
    decision = choose(ROMIL, fleet(), snap(rise=[(2, 0, 0)], bair=[(2, 0, 0)]), now=NOW,
                      exclude=("rise", "bair"))
    assert decision.chosen is None
    assert decision.summary().startswith("no cluster can take T4:2 for org rise (")
    assert "rise: refused the pod just now" in decision.summary()


@pytest.mark.parametrize(("ago", "cooling"), [(0.0, True), (299.0, True), (300.0, False),
                                               (3600.0, False)])
def test_cooldown_expires(ago: float, cooling: bool) -> None:
    history = Timeline((preempted("bair", ago=ago),))
    decision = choose(ROMIL, fleet(), snap(rise=[(2, 2, 0)], bair=[(2, 0, 0)]), history, now=NOW)
    if cooling:
        assert order(decision) == [("rise", OWNER, "queue")]
        assert "(cooldown)" in skipped(decision)["bair"]
    else:
        assert order(decision)[0] == ("bair", BORROWER, "now")
        assert skipped(decision) == {}


def test_cooldown_uses_the_fleet_policy() -> None:
    f = fleet(policy={"borrow_cooldown_seconds": 10})
    history = Timeline((preempted("bair", ago=11),))
    decision = choose(ROMIL, f, snap(rise=[(2, 2, 0)], bair=[(2, 0, 0)]), history, now=NOW)
    assert decision.chosen is not None and decision.chosen.cluster.name == "bair"


@pytest.mark.parametrize(("tier", "outcome"), [(OWNER, "Preempted"), (BORROWER, "Lost"),
                                                (BORROWER, "Failed"), (BORROWER, "")])
def test_only_borrowed_preemptions_cool_down(tier: str, outcome: str) -> None:
    history = Timeline((preempted("bair", tier=tier, outcome=outcome),))
    decision = choose(ROMIL, fleet(), snap(rise=[(2, 2, 0)], bair=[(2, 0, 0)]), history, now=NOW)
    assert order(decision)[0] == ("bair", BORROWER, "now")


@pytest.mark.parametrize(("reason", "cools"), [("NotFound", True), ("Deleted", True),
                                               ("ClusterUnreachable", False)])
def test_a_pod_that_vanished_from_a_borrowed_cluster_cools_it_down(reason: str,
                                                                   cools: bool) -> None:
    attempt = replace(preempted("bair", outcome="Lost"), reason=reason)
    decision = choose(ROMIL, fleet(), snap(rise=[(2, 2, 0)], bair=[(2, 0, 0)]),
                      Timeline((attempt,)), now=NOW)
    first = ("rise", OWNER, "queue") if cools else ("bair", BORROWER, "now")
    assert order(decision)[0] == first


def test_unfinished_attempt_does_not_cool_down() -> None:
    running = Attempt(1, "bair", BORROWER, "p", "skyshare", NOW - 10, outcome="Preempted")
    decision = choose(ROMIL, fleet(), snap(rise=[(2, 2, 0)], bair=[(2, 0, 0)]),
                      Timeline((running,)), now=NOW)
    assert order(decision)[0] == ("bair", BORROWER, "now")


def test_cooldown_is_relaxed_when_it_leaves_nothing() -> None:
    """An org without own clusters waits on the cooling cluster rather than failing."""
    f = fleet({"name": "campus", "owner": "team-a"},
              orgs=[{"name": "team-a", "members": ["team-a-prod"]},
                    {"name": "team-b", "members": ["team-b-dev"]}])
    history = Timeline((preempted("campus"),))
    decision = choose(Request("T4", 2, "team-b", "team-b-dev"), f, snap(campus=[(4, 4, 0)]),
                      history, now=NOW)
    assert order(decision) == [("campus", BORROWER, "queue")]


def test_relaxing_the_cooldown_keeps_other_skips() -> None:
    f = fleet({"name": "campus", "owner": "team-a"}, {"name": "lab", "owner": "team-a"},
              orgs=[{"name": "team-a", "members": ["a"]}, {"name": "team-b", "members": ["b"]}])
    history = Timeline((preempted("campus"),))
    decision = choose(Request("T4", 1, "team-b", "b"), f, snap(campus=[(4, 4, 0)], lab=DOWN),
                      history, now=NOW)
    assert order(decision) == [("campus", BORROWER, "queue")]
    assert skipped(decision) == {"lab": "unreachable: connection refused"}


def two_preemptions(ago: float = 1000.0) -> Timeline:
    return Timeline((preempted("bair", ago=ago + 500, number=1),
                     preempted("bair", ago=ago, number=2)))


def test_pinned_to_owned_after_repeated_preemptions() -> None:
    # cooldowns have long expired; the pin alone keeps the task off borrowed clusters
    decision = choose(ROMIL, fleet(), snap(rise=[(2, 2, 0)], bair=[(2, 0, 0)]),
                      two_preemptions(), now=NOW)
    assert order(decision) == [("rise", OWNER, "queue")]
    assert skipped(decision) == {"bair": "task pinned to owned clusters after repeated preemptions"}


def test_not_pinned_below_the_limit() -> None:
    history = Timeline((preempted("bair", ago=1000),))
    decision = choose(ROMIL, fleet(), snap(rise=[(2, 2, 0)], bair=[(2, 0, 0)]), history, now=NOW)
    assert order(decision)[0] == ("bair", BORROWER, "now")


def test_pin_zero_disables_pinning() -> None:
    f = fleet(policy={"borrow_cooldown_seconds": 300, "pin_owned_after_preemptions": 0})
    decision = choose(ROMIL, f, snap(rise=[(2, 2, 0)], bair=[(2, 0, 0)]), two_preemptions(),
                      now=NOW)
    assert order(decision)[0] == ("bair", BORROWER, "now")


def test_no_pin_for_an_org_without_own_clusters() -> None:
    """Pinning to owned clusters would strand an org that owns none."""
    f = fleet({"name": "bair", "owner": "bair"})
    decision = choose(ROMIL, f, snap(bair=[(2, 0, 0)]), two_preemptions(), now=NOW)
    assert order(decision) == [("bair", BORROWER, "now")]


def test_no_pin_when_own_clusters_lack_the_product() -> None:
    f = fleet({"name": "rise", "owner": "rise", "gpu_products": {"A100": "NVIDIA-A100"}},
              {"name": "bair", "owner": "bair"})
    decision = choose(ROMIL, f, snap(rise={"nodes": [(8, 0, 0)], "product": "NVIDIA-A100"},
                                     bair=[(2, 0, 0)]), two_preemptions(), now=NOW)
    assert order(decision) == [("bair", BORROWER, "now")]
    assert skipped(decision) == {"rise": "has no T4"}


def test_pods_queued_for_another_product_do_not_block() -> None:
    """Eight A100 GPUs waiting on rise do not make its free T4s look claimed."""
    f = fleet({"name": "rise", "owner": "rise",
               "gpu_products": {"T4": "Tesla-T4", "A100": "NVIDIA-A100"}})
    cap = ClusterCapacity("rise", True, nodes=(NodeGpus("t4", "Tesla-T4", 2, 0, 0),
                                               NodeGpus("a100", "NVIDIA-A100", 8, 8, 0)),
                          pending_gpus=9, pending_by_product=(("NVIDIA-A100", 8),))
    decision = choose(ROMIL, f, Snapshot({"rise": cap}, taken_at=NOW), now=NOW)
    assert order(decision) == [("rise", OWNER, "queue")]  # the 1 GPU naming no product counts
    cap = replace(cap, pending_gpus=8)
    decision = choose(ROMIL, f, Snapshot({"rise": cap}, taken_at=NOW), now=NOW)
    assert order(decision) == [("rise", OWNER, "now")]


# -- clusters that cannot take the work ------------------------------------------------------

SKIP_CASES = [
    pytest.param({"name": "bair", "owner": "bair", "lend": False}, snap(bair=[(2, 0, 0)]),
                 "does not lend to other orgs (lend: false)", id="lend-false"),
    pytest.param({"name": "bair", "owner": "bair"}, snap(bair=DOWN),
                 "unreachable: connection refused", id="unreachable"),
    pytest.param({"name": "bair", "owner": "bair"}, snap(), "unreachable: not probed",
                 id="not-probed"),
    pytest.param({"name": "bair", "owner": "bair"}, snap(bair=[]), "no ready Tesla-T4 node",
                 id="no-gpu-node"),
    pytest.param({"name": "bair", "owner": "bair", "gpu_products": {"A100": "NVIDIA-A100"}},
                 snap(bair={"nodes": [(8, 0, 0)], "product": "NVIDIA-A100"}), "has no T4",
                 id="other-product"),
]


@pytest.mark.parametrize(("cluster", "snapshot", "reason"), SKIP_CASES)
def test_skip_reasons(cluster: dict[str, Any], snapshot: Snapshot, reason: str) -> None:
    f = fleet({"name": "rise", "owner": "rise"}, cluster)
    snapshot = Snapshot({**snapshot.clusters, "rise": ClusterCapacity(
        "rise", True, nodes=(NodeGpus("r0", "Tesla-T4", 2, 2, 0),))})
    decision = choose(ROMIL, f, snapshot, now=NOW)
    assert order(decision) == [("rise", OWNER, "queue")]
    assert skipped(decision) == {"bair": reason}


def test_lend_false_still_serves_its_owner() -> None:
    f = fleet({"name": "bair", "owner": "bair", "lend": False})
    decision = choose(ABBEEL, f, snap(bair=[(2, 0, 0)]), now=NOW)
    assert order(decision) == [("bair", OWNER, "now")]


def test_node_too_small_on_one_cluster_only() -> None:
    f = fleet({"name": "small", "owner": "rise"}, {"name": "big", "owner": "bair"})
    decision = choose(Request("T4", 4, "rise", "romil"), f,
                      snap(small=[(2, 0, 0), (2, 0, 0)], big=[(8, 0, 0)]), now=NOW)
    assert order(decision) == [("big", BORROWER, "now")]
    assert skipped(decision) == {"small": "largest Tesla-T4 node has 2 GPUs, need 4"}


# -- refusals ---------------------------------------------------------------------------------

REFUSALS = [
    pytest.param(Request("T4", 2, "berkeley", "romil"),
                 ["org='berkeley'", "unknown org 'berkeley'", "use one of the orgs: bair, rise"],
                 id="unknown-org"),
    pytest.param(Request("T4", 2, "rsie", "romil"), ["did you mean 'rise'"], id="org-typo"),
    pytest.param(Request("T4", 0, "rise", "romil"), ["GPU count must be a whole number >= 1, got 0"],
                 id="zero-gpus"),
    pytest.param(Request("T4", -2, "rise", "romil"), ["got -2"], id="negative-gpus"),
    pytest.param(Request("T4", True, "rise", "romil"), ["got True"], id="bool-gpus"),  # type: ignore[arg-type]
    pytest.param(Request("T4", 1.5, "rise", "romil"), ["got 1.5"], id="fractional-gpus"),  # type: ignore[arg-type]
    pytest.param(Request("A100", 1, "rise", "romil"),
                 ["GPU product 'A100' is offered by no cluster of fleet.yaml", "(products: T4)"],
                 id="unknown-product"),
    pytest.param(Request("t4", 1, "rise", "romil"), ["'t4' is offered by no cluster"],
                 id="product-is-case-sensitive"),
    pytest.param(Request("T4", 3, "rise", "romil"),
                 ["T4:3 needs 3 GPUs on one node", "largest T4 node in the fleet has 2",
                  "ask for at most 2"], id="more-than-any-node"),
]


@pytest.mark.parametrize(("request_", "words"), REFUSALS)
def test_refusals(request_: Request, words: list[str]) -> None:
    with pytest.raises(PlacementError) as info:
        choose(request_, fleet(), snap(rise=[(2, 0, 0)], bair=[(2, 0, 0)]), now=NOW)
    for w in words:
        assert w in str(info.value)
    assert "Fix:" in str(info.value) or "GPU count" in str(info.value)


def test_anyone_org_admits_every_user() -> None:
    f = fleet(orgs=[{"name": "rise", "members": ["*"]}, {"name": "bair", "members": ["abbeel"]}])
    validate(Request("T4", 1, "rise", "someone"), f)
    validate(Request("T4", 1, "rise", None), f)


def test_too_big_is_not_refused_while_a_cluster_is_unreachable() -> None:
    """The unreachable cluster might have a big node: no verdict yet, no candidates."""
    decision = choose(Request("T4", 3, "rise", "romil"), fleet(),
                      snap(rise=[(2, 0, 0)], bair=DOWN), now=NOW)
    assert decision.chosen is None
    assert skipped(decision)["rise"] == "largest Tesla-T4 node has 2 GPUs, need 3"


GPUS = [
    ("T4:2", ("T4", 2)), (" T4 : 1 ", ("T4", 1)), ("A100-80GB:8", ("A100-80GB", 8)),
    ("h100.sxm:16", ("h100.sxm", 16)),
]


@pytest.mark.parametrize(("text", "parsed"), GPUS)
def test_parse_gpus(text: str, parsed: tuple[str, int]) -> None:
    assert parse_gpus(text) == parsed


@pytest.mark.parametrize(("text", "words"), [
    ("T4", "PRODUCT:COUNT"), ("T4:two", "PRODUCT:COUNT"), (":2", "PRODUCT:COUNT"),
    ("T4:2:3", "PRODUCT:COUNT"), ("T4:1.5", "PRODUCT:COUNT"), ("", "PRODUCT:COUNT"),
    ("T4:0", ">= 1"), ("T4:-1", ">= 1"), (None, "PRODUCT:COUNT"),
])
def test_parse_gpus_refuses(text: Any, words: str) -> None:
    with pytest.raises(PlacementError, match=words.replace("(", r"\(")):
        parse_gpus(text)


# -- the explanation -------------------------------------------------------------------------


def test_rows_and_table() -> None:
    f = fleet({"name": "rise", "owner": "rise"}, {"name": "bair", "owner": "bair"},
              {"name": "cloud", "owner": "bair", "lend": False})
    decision = choose(ROMIL, f, snap(rise=[(2, 2, 0)], bair=[(2, 0, 0)], cloud=DOWN), now=NOW)
    rows = [(r.cluster, r.owner, r.tier, r.free, r.verdict) for r in decision.rows]
    assert rows == [
        ("bair", "bair", BORROWER, "2/2", "chosen"),
        ("rise", "rise", OWNER, "0/2", "candidate"),
        ("cloud", "bair", BORROWER, "-", "skipped"),
    ]
    assert decision.rows[1].reason.startswith("#2: full; queues as owner")
    table = decision.table().splitlines()
    assert table[0].split() == ["cluster", "owner", "tier", "free", "decision", "why"]
    assert set(table[1]) <= {"-", " "}
    assert table[2].split()[:5] == ["bair", "bair", "borrower", "2/2", "chosen"]
    assert table[4].split()[:5] == ["cloud", "bair", "borrower", "-", "skipped"]
    assert table[4].endswith("does not lend to other orgs (lend: false)")


def test_summary_names_choice_and_others() -> None:
    decision = choose(ROMIL, fleet(), snap(rise=[(2, 2, 0)], bair=[(2, 0, 0)]), now=NOW)
    assert decision.summary() == (
        "placing T4:2 for org rise on bair as borrower (borrows it; 2 Tesla-T4 free); "
        "others: rise: #2: full; queues as owner (no queue ahead)"
    )


def test_summary_without_others() -> None:
    f = fleet({"name": "rise", "owner": "rise"})
    decision = choose(ROMIL, f, snap(rise=[(2, 0, 0)]), now=NOW)
    assert decision.summary() == "placing T4:2 for org rise on rise as owner (owns it; 2 Tesla-T4 free)"


def test_choose_is_deterministic_and_independent_of_fleet_order() -> None:
    specs = [{"name": n, "owner": o} for n, o in
             [("c3", "bair"), ("c1", "rise"), ("c2", "bair"), ("c0", "rise")]]
    s = snap(c0=[(2, 0, 0)], c1=[(2, 0, 0)], c2=[(2, 0, 0)], c3=[(2, 0, 0)])
    a = choose(ROMIL, fleet(*specs), s, now=NOW)
    b = choose(ROMIL, fleet(*reversed(specs)), s, now=NOW)
    assert order(a) == order(b) == [("c0", OWNER, "now"), ("c1", OWNER, "now"),
                                    ("c2", BORROWER, "now"), ("c3", BORROWER, "now")]


# When several reasons apply, the first in the documented order is the one shown.
PRECEDENCE = [
    pytest.param({"lend": False}, [(2, 0, 0)], Timeline(), ["bair"], "refused the pod just now",
                 id="refused-before-lend-false"),
    pytest.param({"lend": False}, [(2, 0, 0)], two_preemptions(ago=1),
                 [], "does not lend to other orgs (lend: false)", id="lend-false-before-pinned"),
    pytest.param({}, DOWN, two_preemptions(ago=1), [],
                 "task pinned to owned clusters after repeated preemptions",
                 id="pinned-before-unreachable"),
    pytest.param({}, DOWN, Timeline((preempted("bair"),)), [], "unreachable: connection refused",
                 id="unreachable-before-cooldown"),
    pytest.param({}, [], Timeline((preempted("bair"),)), [], "no ready Tesla-T4 node",
                 id="no-node-before-cooldown"),
    pytest.param({}, [(1, 0, 0)], Timeline((preempted("bair"),)), [],
                 "largest Tesla-T4 node has 1 GPUs, need 2", id="too-small-before-cooldown"),
]


@pytest.mark.parametrize(("extra", "bair_nodes", "history", "exclude", "reason"), PRECEDENCE)
def test_skip_reason_precedence(extra: dict[str, Any], bair_nodes: Any, history: Timeline,
                                exclude: list[str], reason: str) -> None:
    f = fleet({"name": "rise", "owner": "rise"}, {"name": "bair", "owner": "bair", **extra})
    decision = choose(ROMIL, f, snap(rise=[(2, 2, 0)], bair=bair_nodes), history, now=NOW,
                      exclude=exclude)
    assert order(decision) == [("rise", OWNER, "queue")]
    assert skipped(decision) == {"bair": reason}


# -- a gang (nodes > 1): every member on one cluster, or that cluster is not chosen now ----------
GANG = Request("T4", 2, "rise", "romil", nodes=2)


def test_a_gang_runs_now_only_where_every_member_fits_now() -> None:
    # rise (owned) has one of its two nodes busy with its own work: only half the gang fits
    d = choose(GANG, fleet(), snap(rise=[(2, 2, 0), (2, 0, 0)], bair=[(2, 0, 0), (2, 0, 0)]))
    chosen = d.chosen
    assert chosen is not None and chosen.cluster.name == "bair" and chosen.mode.value == "now"
    assert "all 2 gang members fit now" in chosen.reason
    rise = next(c for c in d.candidates if c.cluster.name == "rise")
    assert rise.mode.value == "queue" and "1 of 2 members fit" in rise.reason
    assert "a gang of 2 x T4:2" in d.summary()


def test_free_gpus_split_across_nodes_do_not_hold_a_member() -> None:
    # 2 GPUs free on rise, one on each node: no member (2 GPUs on one node) fits there
    d = choose(GANG, fleet(), snap(rise=[(2, 1, 0), (2, 1, 0)], bair=[(2, 2, 0), (2, 2, 0)]))
    assert {c.mode.value for c in d.candidates} == {"queue"}


def test_a_cluster_too_small_for_the_gang_is_skipped_and_says_why() -> None:
    d = choose(GANG, fleet(), snap(rise=[(2, 0, 0)], bair=[(2, 0, 0), (2, 0, 0)]))
    assert [c.cluster.name for c in d.candidates] == ["bair"]
    row = next(r for r in d.rows if r.cluster == "rise")
    assert row.verdict == "skipped"
    assert row.reason == ("cannot take the whole gang: room for 1 of 2 members (Tesla-T4 "
                          "nodes with 2 GPUs each)")


def test_an_owner_reclaims_lent_gpus_for_the_whole_gang() -> None:
    # rise: one node free, the other lent to bair; bair's cluster is full
    d = choose(GANG, fleet(), snap(rise=[(2, 0, 0), (2, 2, 2)], bair=[(2, 2, 0), (2, 2, 0)]))
    chosen = d.chosen
    assert chosen is not None and (chosen.cluster.name, chosen.mode.value) == ("rise", "reclaim")
    assert "1 of 2 gang members fit now" in chosen.reason
    # a borrower never reclaims: bair's gang on rise queues
    bair = replace(GANG, org="bair", user="abbeel")
    d = choose(bair, fleet(), snap(rise=[(2, 0, 0), (2, 2, 0)], bair=[(2, 2, 0), (2, 2, 0)]))
    assert {c.mode.value for c in d.candidates} == {"queue"}


def test_a_gang_larger_than_any_cluster_is_refused_with_the_fix() -> None:
    big = replace(GANG, nodes=3)
    with pytest.raises(PlacementError, match=r"a gang of 3 x T4:2 needs 3 such nodes on one "
                                             r"cluster.*Fix: ask for at most 2 nodes"):
        choose(big, fleet(), snap(rise=[(2, 0, 0), (2, 0, 0)], bair=[(2, 0, 0)]))
    # while a cluster does not answer, it may be the one that fits: no refusal
    d = choose(big, fleet(), snap(rise=[(2, 0, 0), (2, 0, 0)], bair=DOWN))
    assert d.candidates == ()


@pytest.mark.parametrize("nodes", [0, -1, True, 1.5])
def test_nodes_must_be_a_whole_number_of_at_least_one(nodes: Any) -> None:
    with pytest.raises(PlacementError, match="nodes must be a whole number >= 1"):
        validate(replace(GANG, nodes=nodes), fleet())


def test_one_node_is_placed_as_before_gangs() -> None:
    one = replace(GANG, nodes=1)
    s = snap(rise=[(2, 2, 0), (2, 0, 0)], bair=[(2, 0, 0)])
    assert choose(one, fleet(), s).chosen.cluster.name == "rise"  # type: ignore[union-attr]
