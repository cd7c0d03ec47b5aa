"""What people sharing clusters ask: who uses my GPUs, who lends to whom, what would be preempted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from airflow_provider_skyshare.fleet import Fleet
from airflow_provider_skyshare.placement import Request, choose
from airflow_provider_skyshare.snapshot import ClusterCapacity, Holder, NodeGpus, Snapshot, summarize
from airflow_provider_skyshare.views import (
    explain_text,
    fleet_rows,
    fleet_table,
    node_cells,
    node_rows,
    victims,
)

T4, A100 = "Tesla-T4", "NVIDIA-A100"
ABBEEL = Request("T4", 2, "bair", "abbeel")
ROMIL = Request("T4", 2, "rise", "romil")


def holder(pod: str, gpus: int, tier: str, org: str = "", node: str = "", task: str = "",
           product: str = "") -> Holder:
    return Holder("skyshare", pod, gpus, tier, org=org, task=task, node=node, product=product)


def cap(cluster: str, nodes: list[tuple[str, str, int, int, int]], holders: list[Holder],
        pending: int = 0) -> ClusterCapacity:
    return ClusterCapacity(cluster, True, nodes=tuple(NodeGpus(*n) for n in nodes),
                           holders=tuple(holders), pending_gpus=pending)


@pytest.fixture
def seed_snapshot() -> Snapshot:
    """After step 2 of the seed: romil on rise (owner), romil-train borrowing bair, and
    abbeel's pod queued on bair."""
    return Snapshot({
        "rise": cap("rise", [("rise-gpu-0", T4, 2, 2, 0)],
                    [holder("romil", 2, "owner", "rise", "rise-gpu-0", "d/romil/r")]),
        "bair": cap("bair", [("bair-gpu-0", T4, 2, 2, 2)],
                    [holder("romil-train-1", 2, "borrower", "rise", "bair-gpu-0", "d/romil-train/r"),
                     holder("abbeel-1", 2, "owner", "bair", "", "d/abbeel/r")], pending=2),
    })


def test_fleet_rows_seed(seed_fleet: Fleet, seed_snapshot: Snapshot) -> None:
    rows = {r["cluster"]: r for r in fleet_rows(seed_fleet, seed_snapshot)}
    assert rows["rise"] == {
        "cluster": "rise", "owner": "rise", "product": "T4", "reachable": True, "error": "",
        "total": 2, "free": 0, "owner_use": 2, "lent": {}, "other_use": 0, "queued": {},
    }
    assert rows["bair"] == {
        "cluster": "bair", "owner": "bair", "product": "T4", "reachable": True, "error": "",
        "total": 2, "free": 0, "owner_use": 0, "lent": {"rise": 2}, "other_use": 0,
        "queued": {"bair/owner": 2},
    }


def test_fleet_rows_attribution(fleet_of: Callable[..., Fleet]) -> None:
    f = fleet_of([{"name": "rise", "owner": "rise"}])
    snapshot = Snapshot({"rise": cap("rise", [("n0", T4, 8, 8, 3)], [
        holder("own-queue", 1, "owner", "rise", "n0"),
        holder("own-org-other-queue", 1, "other", "rise", "n0"),
        holder("guest", 2, "borrower", "bair", "n0"),
        holder("anonymous-low-prio", 1, "borrower", "", "n0"),
        holder("bair-in-owner-queue", 1, "owner", "bair", "n0"),
        holder("plain", 2, "other", "", "n0"),
        holder("waiting-guest", 4, "borrower", "bair"),
        holder("waiting-guest-2", 1, "borrower", "bair"),
        holder("waiting-plain", 1, "other"),
    ])})
    (row,) = fleet_rows(f, snapshot)
    assert row["owner_use"] == 2
    assert row["lent"] == {"bair": 3, "?": 1}
    assert row["other_use"] == 2
    assert row["queued"] == {"bair/borrower": 5, "?/other": 1}


def test_fleet_rows_per_product(fleet_of: Callable[..., Fleet]) -> None:
    f = fleet_of([{"name": "rise", "owner": "rise", "gpu_products": {"T4": T4, "A100": A100}}])
    snapshot = Snapshot({"rise": cap("rise", [("t4-0", T4, 2, 1, 0), ("a100-0", A100, 8, 4, 4)], [
        holder("small", 1, "owner", "rise", "t4-0"),
        holder("big", 4, "borrower", "bair", "a100-0"),
        holder("elsewhere", 1, "owner", "rise", "cpu-node"),
    ])})
    rows = {r["product"]: r for r in fleet_rows(f, snapshot)}
    assert (rows["T4"]["total"], rows["T4"]["free"], rows["T4"]["owner_use"], rows["T4"]["lent"]) == (
        2, 1, 1, {})
    assert (rows["A100"]["total"], rows["A100"]["free"], rows["A100"]["owner_use"],
            rows["A100"]["lent"]) == (8, 4, 0, {"bair": 4})


def test_fleet_rows_queue_per_product(fleet_of: Callable[..., Fleet]) -> None:
    """Each queued pod is listed once: on its product's row, or the first row if it names none."""
    f = fleet_of([{"name": "rise", "owner": "rise", "gpu_products": {"T4": T4, "A100": A100}}])
    snapshot = Snapshot({"rise": cap("rise", [("t4-0", T4, 2, 2, 0), ("a100-0", A100, 8, 8, 0)], [
        holder("q-a100", 8, "borrower", "bair", product=A100),
        holder("q-t4", 2, "owner", "rise", product=T4),
        holder("q-any", 1, "owner", "rise"),
    ])})
    rows = {r["product"]: r for r in fleet_rows(f, snapshot)}
    assert rows["T4"]["queued"] == {"rise/owner": 3}
    assert rows["A100"]["queued"] == {"bair/borrower": 8}


def test_fleet_rows_unreachable(seed_fleet: Fleet) -> None:
    snapshot = Snapshot({"rise": ClusterCapacity("rise", False, "timed out after 3s")})
    rows = {r["cluster"]: r for r in fleet_rows(seed_fleet, snapshot)}
    assert (rows["rise"]["reachable"], rows["rise"]["error"], rows["rise"]["total"]) == (
        False, "timed out after 3s", 0)
    assert rows["bair"]["error"] == "not probed"


def test_fleet_rows_from_summarised_json(seed_fleet: Fleet, node: Callable[..., dict[str, Any]],
                                         pod: Callable[..., dict[str, Any]]) -> None:
    """The whole path the CLI takes: raw nodes and pods -> capacity -> rows."""
    bair = seed_fleet.clusters["bair"]
    capacity = summarize(bair, [node("bair-gpu-0", 2)], [
        pod("romil-train", 2, node="bair-gpu-0", queue="skyshare-borrower", priority="low-priority",
            org="rise"),
        pod("abbeel", 2, queue="skyshare-owner", priority="high-priority", org="bair"),
        pod("old", 2, node="bair-gpu-0", phase="Succeeded", org="bair"),
    ])
    (row,) = [r for r in fleet_rows(seed_fleet, Snapshot({"bair": capacity})) if r["cluster"] == "bair"]
    assert (row["free"], row["lent"], row["queued"], row["owner_use"]) == (
        0, {"rise": 2}, {"bair/owner": 2}, 0)


def test_fleet_table(seed_fleet: Fleet, seed_snapshot: Snapshot) -> None:
    lines = fleet_table(seed_fleet, seed_snapshot).splitlines()
    assert lines[0].split() == ["cluster", "owner", "gpu", "total", "free", "owner", "uses", "lent",
                                "queued", "note"]
    assert lines[2].split() == ["rise", "rise", "T4", "2", "0", "2", "-", "-"]
    assert lines[3].split() == ["bair", "bair", "T4", "2", "0", "0", "2", "to", "rise", "2",
                                "bair/owner"]


def test_fleet_table_other_use_and_unreachable(fleet_of: Callable[..., Fleet]) -> None:
    f = fleet_of([{"name": "rise", "owner": "rise"}, {"name": "bair", "owner": "bair"}])
    snapshot = Snapshot({
        "rise": cap("rise", [("n0", T4, 4, 3, 0)], [holder("plain", 3, "other", "", "n0")]),
        "bair": ClusterCapacity("bair", False, "x" * 100),
    })
    lines = fleet_table(f, snapshot).splitlines()
    assert lines[2].endswith("3 other")
    assert lines[3].split()[:8] == ["bair", "bair", "T4", "-", "-", "-", "-", "-"]
    assert lines[3].endswith("unreachable: " + "x" * 60)  # long errors are cut


# -- victims and explain ---------------------------------------------------------------------


def test_victims_of_the_seed_reclaim(seed_fleet: Fleet, seed_snapshot: Snapshot) -> None:
    decision = choose(ABBEEL, seed_fleet, seed_snapshot)
    assert decision.chosen is not None and decision.chosen.mode == "reclaim"
    assert [h.pod for h in victims(decision, seed_snapshot)] == ["romil-train-1"]


def test_no_victims_without_reclaim(seed_fleet: Fleet, seed_snapshot: Snapshot) -> None:
    decision = choose(ROMIL, seed_fleet, seed_snapshot)  # rise queues: nobody is preempted
    assert decision.chosen is not None and decision.chosen.mode == "queue"
    assert victims(decision, seed_snapshot) == []
    nothing = choose(ROMIL, seed_fleet, seed_snapshot, exclude=["rise", "bair"])
    assert nothing.chosen is None and victims(nothing, seed_snapshot) == []


def test_victims_fewest_pods_on_the_best_node(fleet_of: Callable[..., Fleet]) -> None:
    f = fleet_of([{"name": "bair", "owner": "bair"}])
    snapshot = Snapshot({"bair": cap("bair", [("n0", T4, 4, 4, 4), ("n1", T4, 4, 4, 3)], [
        holder("small-a", 1, "borrower", "rise", "n0"), holder("small-b", 1, "borrower", "rise", "n0"),
        holder("small-c", 1, "borrower", "rise", "n0"), holder("small-d", 1, "borrower", "rise", "n0"),
        holder("owner-job", 1, "owner", "bair", "n1"), holder("big", 3, "borrower", "rise", "n1"),
    ])})
    decision = choose(Request("T4", 3, "bair", "abbeel"), f, snapshot)
    assert decision.chosen is not None and decision.chosen.mode == "reclaim"
    assert [h.pod for h in victims(decision, snapshot)] == ["big"]


def test_victims_largest_first_and_free_gpus_count(fleet_of: Callable[..., Fleet]) -> None:
    f = fleet_of([{"name": "bair", "owner": "bair"}])
    snapshot = Snapshot({"bair": cap("bair", [("n0", T4, 4, 3, 3)], [
        holder("one", 1, "borrower", "rise", "n0"), holder("two", 2, "borrower", "rise", "n0"),
    ])})
    decision = choose(Request("T4", 3, "bair", "abbeel"), f, snapshot)
    # 1 free + the 2-GPU pod is enough: the 1-GPU pod keeps running
    assert [h.pod for h in victims(decision, snapshot)] == ["two"]


def test_explain_text_with_victims(seed_fleet: Fleet, seed_snapshot: Snapshot) -> None:
    decision = choose(ABBEEL, seed_fleet, seed_snapshot)
    text = explain_text(decision, seed_snapshot)
    lines = text.splitlines()
    assert lines[0] == decision.summary()
    assert lines[0].startswith("placing T4:2 for org bair on bair as owner (owns it; reclaims 2")
    assert lines[1] == ""
    assert lines[2].split() == ["cluster", "owner", "tier", "free", "decision", "why"]
    assert "would preempt (Kueue reclaims borrowed GPUs):" in lines
    assert lines[-1] == "  skyshare/romil-train-1  2 GPU  org=rise  task=d/romil-train/r"


def test_explain_text_without_victims(seed_fleet: Fleet, seed_snapshot: Snapshot) -> None:
    decision = choose(ROMIL, seed_fleet, seed_snapshot)
    text = explain_text(decision, seed_snapshot)
    assert "would preempt" not in text
    assert text == f"{decision.summary()}\n\n{decision.table()}"


def test_explain_text_unknown_org_and_task(fleet_of: Callable[..., Fleet]) -> None:
    f = fleet_of([{"name": "bair", "owner": "bair"}])
    snapshot = Snapshot({"bair": cap("bair", [("n0", T4, 2, 2, 2)],
                                     [holder("stray", 2, "borrower", "", "n0")])})
    text = explain_text(choose(ABBEEL, f, snapshot), snapshot)
    assert text.endswith("  skyshare/stray  2 GPU  org=?  task=?")


def test_node_rows_free_gpus_per_node_from_node_and_pod_lists(
        fleet_of: Callable[..., Fleet], node: Callable[..., dict[str, Any]],
        pod: Callable[..., dict[str, Any]]) -> None:
    fleet = fleet_of([{"name": "rise", "owner": "rise", "gpu_products": {"T4": T4, "A100": A100}},
                      {"name": "bair", "owner": "bair"}])
    rise = summarize(fleet.clusters["rise"], [
        node("n-a100", 8, A100), node("n-t4", 4), node("n-cordoned", 4, unschedulable=True),
        node("n-cpu", None), node("n-v100", 2, "Tesla-V100"),
    ], [
        pod("owner-1", 1, node="n-t4", org="rise"),
        pod("borrower-2", 2, node="n-t4", queue="skyshare-borrower", org="bair"),
        pod("done", 1, node="n-t4", phase="Succeeded"),
        pod("queued", 4, selector=A100),
        pod("a100-6", 6, node="n-a100", org="rise"),
    ])
    snapshot = Snapshot({"rise": rise, "bair": ClusterCapacity("bair", False, "connection refused")})
    assert node_rows(fleet, snapshot) == [
        {"cluster": "rise", "node": "n-a100", "gpu": "A100", "product": A100, "total": 8, "free": 2,
         "borrowed": 0, "error": ""},
        {"cluster": "rise", "node": "n-t4", "gpu": "T4", "product": T4, "total": 4, "free": 1,
         "borrowed": 2, "error": ""},
        {"cluster": "bair", "node": None, "gpu": None, "product": None, "total": None, "free": None,
         "borrowed": None, "error": "connection refused"},
    ]
    assert node_cells(fleet, snapshot) == [
        ["rise", "n-a100", "A100", A100, "8", "2", "", ""],
        ["rise", "n-t4", "T4", T4, "4", "1", "2", ""],
        ["bair", "-", "-", "-", "-", "-", "-", "unreachable: connection refused"],
    ]


def test_node_rows_of_a_full_node_and_an_empty_cluster(fleet_of: Callable[..., Fleet],
                                                       node: Callable[..., dict[str, Any]],
                                                       pod: Callable[..., dict[str, Any]]) -> None:
    fleet = fleet_of([{"name": "rise", "owner": "rise"}])
    over = summarize(fleet.clusters["rise"], [node("n", 2)], [pod("big", 3, node="n")])
    assert [(r["node"], r["free"]) for r in node_rows(fleet, Snapshot({"rise": over}))] == [("n", 0)]
    empty = summarize(fleet.clusters["rise"], [], [])
    assert node_rows(fleet, Snapshot({"rise": empty})) == []
