"""The timeline and the fleet as SVG (issue 16), on recorded real timelines (tests/fixtures/
timelines: from the soaks' reports) and the seed scenario's snapshot. The SVG is parsed as
XML, so a string that breaks out of its text or attribute fails the parse or the checks."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_skyshare.charts import (
    F_BARS,
    T_LABELS,
    T_RIGHT,
    T_WIDTH,
    Use,
    fleet_svg,
    preemptor,
    segments,
    tick_step,
    timeline_svg,
)
from airflow_provider_skyshare.fleet import Fleet
from airflow_provider_skyshare.snapshot import ClusterCapacity, Holder, NodeGpus, Snapshot
from airflow_provider_skyshare.timeline import Attempt, Timeline
from airflow_provider_skyshare.views import fleet_rows

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "timelines"
NS = {"s": "http://www.w3.org/2000/svg"}
HOSTILE = "<script>alert('x')</script>&\"q\""


def recorded(name: str) -> Timeline:
    return Timeline.from_list(json.loads((FIXTURES / f"{name}.json").read_text())["attempts"])


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def groups(root: ET.Element, cls: str) -> list[ET.Element]:
    return [g for g in root.iter(f"{{{NS['s']}}}g") if g.get("class") == cls]


def title(el: ET.Element) -> str:
    found = el.find("s:title", NS)
    assert found is not None, ET.tostring(el)
    return found.text or ""


def texts(el: ET.Element) -> list[str]:
    return [t.text or "" for t in el.iter(f"{{{NS['s']}}}text")]


# ---- timeline ----------------------------------------------------------------------------

def test_one_lane_per_cluster_in_the_order_the_task_went_there() -> None:
    root = parse(timeline_svg(recorded("moved-three-clusters")))
    assert [g.get("data-cluster") for g in groups(root, "lane")] == ["bair", "lab", "rise"]
    assert [texts(g) for g in groups(root, "lane")] == [["bair"], ["lab"], ["rise"]]
    first, second = recorded("preempted-then-owner").attempts  # bair, then rise
    back = replace(first, number=3, placed_at=second.ended_at + 1, ended_at=second.ended_at + 9)
    root = parse(timeline_svg(Timeline((second, first, back))))
    assert [g.get("data-cluster") for g in groups(root, "lane")] == ["rise", "bair"]


def test_one_bar_per_attempt_with_its_cluster_and_outcome() -> None:
    timeline = recorded("moved-three-clusters")
    bars = groups(parse(timeline_svg(timeline)), "attempt")
    assert [(b.get("data-number"), b.get("data-cluster"), b.get("data-outcome")) for b in bars] == [
        ("1", "bair", "Moved"), ("2", "lab", "Preempted"), ("3", "bair", "Moved"),
        ("4", "bair", "Moved"), ("5", "rise", "Preempted"), ("6", "bair", "Succeeded")]
    # the outcome is written, not only coloured
    assert [texts(b) for b in bars][:2] == [["#1 Moved"], ["#2 Preempted"]]


def test_bars_run_from_placement_to_end_on_one_time_scale() -> None:
    timeline = recorded("preempted-then-owner")
    first, second = timeline.attempts
    bars = groups(parse(timeline_svg(timeline)), "attempt")
    left, right = T_LABELS, T_WIDTH - T_RIGHT
    span = second.ended_at - first.placed_at  # the first placement to the last end

    def x(t: float) -> float:
        return left + (t - first.placed_at) / span * (right - left)

    for bar, a in zip(bars, timeline.attempts, strict=True):
        assert float(bar.get("data-x")) == pytest.approx(x(a.placed_at), abs=0.1)
        assert float(bar.get("data-width")) == pytest.approx(x(a.ended_at) - x(a.placed_at),
                                                              abs=0.15)
    assert float(bars[1].get("data-x")) + float(bars[1].get("data-width")) == pytest.approx(right)


def test_queued_part_is_thin_and_the_run_full_height() -> None:
    """Attempt 2 of soak22 queued 0.1 s and ran 46 s; a Moved attempt never started."""
    bars = groups(parse(timeline_svg(recorded("moved-three-clusters"))), "attempt")
    rects = {b.get("data-number"): {r.get("class"): r for r in b.findall("s:rect", NS)}
             for b in bars}
    assert set(rects["1"]) == {"queued"}  # moved while queued
    assert set(rects["6"]) == {"queued", "ran"}
    assert float(rects["6"]["queued"].get("height")) < float(rects["6"]["ran"].get("height"))


def test_preemptions_are_marked_with_the_preemptor() -> None:
    timeline = recorded("moved-three-clusters")
    marks = groups(parse(timeline_svg(timeline)), "preemption")
    assert [(m.get("data-number"), m.get("data-by")) for m in marks] == [
        ("2", "soak_lab/work"), ("5", "soak_rise/work")]
    assert texts(marks[0]) == ["preempted by soak_lab/work"]
    assert timeline.attempts[1].preempted_by in title(marks[0])  # the whole of it, run id too


def test_a_preemption_whose_preemptor_is_not_known_is_marked_too() -> None:
    """Kueue's message named no pod (or no message was read): the mark says what did it."""
    first, second = recorded("preempted-then-owner").attempts
    anonymous = replace(first, preempted_by="kueue (reclamation within the cohort)")
    lost = replace(second, outcome="Lost", preempted_by="", ended_at=second.ended_at)
    root = parse(timeline_svg(Timeline((anonymous, lost))))
    (mark,) = groups(root, "preemption")
    assert texts(mark) == ["preempted by kueue (reclamation within the cohort)"]
    (mark,) = groups(parse(timeline_svg(Timeline((replace(first, preempted_by=""),)))),
                     "preemption")
    assert texts(mark) == ["preempted"]


def test_each_bar_has_a_title_saying_what_happened() -> None:
    timeline = recorded("preempted-then-owner")
    bars = groups(parse(timeline_svg(timeline)), "attempt")
    assert title(bars[0]).startswith("attempt 1 on bair as borrower: Preempted")
    assert "pod skyshare-rise/soak22-30a01c29-t1-a1" in title(bars[0])
    assert "preempted by soak/soak24/run-bd6d6eec via kueue" in title(bars[0])
    assert title(bars[1]).startswith("attempt 2 on rise as owner: Succeeded")


def test_colour_is_not_the_only_carrier() -> None:
    """Each outcome shown has its own fill (a pattern where two could be confused), and the
    legend names them."""
    root = parse(timeline_svg(recorded("moved-three-clusters")))
    fills = {b.get("data-outcome"): b.find("s:rect", NS).get("fill")
             for b in groups(root, "attempt")}
    assert fills == {"Moved": "url(#tl-Moved)", "Preempted": "url(#tl-Preempted)",
                     "Succeeded": "#009E73"}
    patterns = {p.get("id") for p in root.iter(f"{{{NS['s']}}}pattern")}
    assert {"tl-Moved", "tl-Preempted"} <= patterns
    assert {"Succeeded", "Preempted", "Moved"} <= set(texts(root))


def test_an_attempt_still_running_reaches_now() -> None:
    done, running = recorded("preempted-then-owner").attempts
    running = replace(running, ended_at=None, outcome="")
    now = running.started_at + 100
    bars = groups(parse(timeline_svg(Timeline((done, running)), now=now)), "attempt")
    assert bars[1].get("data-outcome") == "Running"
    assert float(bars[1].get("data-x")) + float(bars[1].get("data-width")) == pytest.approx(
        T_WIDTH - T_RIGHT)
    queued = replace(running, started_at=None)
    bars = groups(parse(timeline_svg(Timeline((done, queued)), now=now)), "attempt")
    assert bars[1].get("data-outcome") == "Pending"
    assert {r.get("class") for r in bars[1].findall("s:rect", NS)} == {"queued"}


def test_an_outcome_this_version_does_not_know_is_drawn_as_other() -> None:
    a = Attempt(1, "rise", "owner", "p", "ns", placed_at=10.0, ended_at=20.0, outcome="Evicted2")
    root = parse(timeline_svg(Timeline((a,))))
    (bar,) = groups(root, "attempt")
    assert bar.get("data-outcome") == "Evicted2" and texts(bar) == ["#1 Evicted2"]
    assert bar.find("s:rect", NS).get("fill") == "url(#tl-unknown)"


def test_user_strings_are_escaped() -> None:
    a = Attempt(1, HOSTILE, "borrower", HOSTILE, HOSTILE, placed_at=10.0, started_at=11.0,
                ended_at=20.0, outcome="Preempted", why=HOSTILE,
                preempted_by=f"d/{HOSTILE}/r via kueue (x)")
    b = Attempt(2, "rise", "owner", "p", "ns", placed_at=20.5, ended_at=30.0, outcome=HOSTILE)
    svg = timeline_svg(Timeline((a, b)))
    root = parse(svg)  # well-formed: nothing broke out of its text or attribute
    assert not list(root.iter(f"{{{NS['s']}}}script")) and "<script>" not in svg
    assert groups(root, "lane")[0].get("data-cluster") == HOSTILE
    assert f"pod {HOSTILE}/{HOSTILE}" in title(groups(root, "attempt")[0])
    assert groups(root, "preemption")[0].get("data-by") == f"d/{HOSTILE}"
    assert groups(root, "attempt")[1].get("data-outcome") == HOSTILE


def test_an_attempt_number_from_stored_json_is_escaped_too() -> None:
    """Timelines come back from XCom and pod annotations, which a DAG author can write: a
    number that is not one must not break out of its attribute."""
    stored = {"number": HOSTILE, "cluster": "rise", "tier": "owner", "pod": "p",
              "namespace": "ns", "placed_at": 10.0, "ended_at": 20.0, "outcome": "Preempted",
              "preempted_by": "d/abbeel/r via kueue (x)"}
    svg = timeline_svg(Timeline.from_list([stored]))
    root = parse(svg)
    assert "<script>" not in svg
    assert groups(root, "attempt")[0].get("data-number") == HOSTILE
    assert groups(root, "preemption")[0].get("data-number") == HOSTILE


def test_no_attempts_no_chart() -> None:
    assert timeline_svg(Timeline()) == ""


@pytest.mark.parametrize(("text", "who"), [
    ("bair_user/abbeel/manual__2026-11-23T17:18:53.066389+00:00 via kueue (reclamation within "
     "the cohort)", "bair_user/abbeel"),
    ("pod uid 25ca3560-4180 (gone) via kueue (reclamation)", "pod uid 25ca3560-4180 (gone)"),
    ("pod skyshare-bair/other via kube-scheduler (PreemptionByScheduler)", "pod skyshare-bair/other"),
    ("kueue (reclamation within the cohort)", "kueue (reclamation within the cohort)"),
    ("", ""),
])
def test_preemptor_is_the_name_before_via(text: str, who: str) -> None:
    assert preemptor(text) == who


@pytest.mark.parametrize(("span", "step"), [(0.5, 1), (8, 1), (9, 2), (53, 10), (181, 30),
                                            (3000, 600), (10**7, 86400)])
def test_ticks_are_round_and_few(span: float, step: int) -> None:
    assert tick_step(span) == step


# ---- fleet -------------------------------------------------------------------------------

def cap(cluster: str, nodes: list[tuple[str, str, int, int, int]], holders: list[Holder],
        pending: int = 0) -> ClusterCapacity:
    return ClusterCapacity(cluster, True, nodes=tuple(NodeGpus(*n) for n in nodes),
                           holders=tuple(holders), pending_gpus=pending)


def holder(pod: str, gpus: int, tier: str, org: str, node: str = "") -> Holder:
    return Holder("skyshare", pod, gpus, tier, org=org, task=f"d/{pod}/r", node=node)


@pytest.fixture
def seed_rows(seed_fleet: Fleet) -> list[dict[str, Any]]:
    """Step 2 of the seed: romil on rise, romil-train borrowing bair, abbeel queued on bair."""
    return fleet_rows(seed_fleet, Snapshot({
        "rise": cap("rise", [("rise-gpu-0", "Tesla-T4", 2, 2, 0)],
                    [holder("romil", 2, "owner", "rise", "rise-gpu-0")]),
        "bair": cap("bair", [("bair-gpu-0", "Tesla-T4", 2, 2, 2)],
                    [holder("romil-train-1", 2, "borrower", "rise", "bair-gpu-0"),
                     holder("abbeel-1", 2, "owner", "bair")], pending=2),
    }))


def bars(svg: str) -> dict[str, list[tuple[str, int]]]:
    return {c.get("data-cluster"): [(s.get("data-use"), int(s.get("data-gpus")))
                                    for s in groups(c, "segment")]
            for c in groups(parse(svg), "cluster")}


def test_fleet_bars_stack_owner_use_lent_and_free(seed_rows: list[dict[str, Any]]) -> None:
    svg = fleet_svg(seed_rows)
    assert bars(svg) == {"rise": [("owner", 2)], "bair": [("lent", 2)]}
    bair = next(c for c in groups(parse(svg), "cluster") if c.get("data-cluster") == "bair")
    (lent,) = groups(bair, "segment")
    assert title(lent) == "bair T4: 2 lent to rise"
    assert "2 lent to rise" in texts(lent)


def test_queued_is_beside_the_bar(seed_rows: list[dict[str, Any]]) -> None:
    clusters = {c.get("data-cluster"): c for c in groups(parse(fleet_svg(seed_rows)), "cluster")}
    (queued,) = groups(clusters["bair"], "queued")
    assert queued.get("data-gpus") == "2" and texts(queued) == ["2 queued: bair/owner 2"]
    assert "none queued" in texts(clusters["rise"])


def test_one_scale_for_every_cluster(fleet_of: Any) -> None:
    fleet = fleet_of([{"name": "big", "owner": "rise"}, {"name": "small", "owner": "bair"}])
    rows = fleet_rows(fleet, Snapshot({
        "big": cap("big", [("b0", "Tesla-T4", 8, 3, 2)],
                   [holder("own", 1, "owner", "rise", "b0"),
                    holder("guest", 2, "borrower", "bair", "b0")]),
        "small": cap("small", [("s0", "Tesla-T4", 2, 0, 0)], []),
    }))
    root = parse(fleet_svg(rows))
    widths = {(c.get("data-cluster"), s.get("data-use")): float(s.get("data-width"))
              for c in groups(root, "cluster") for s in groups(c, "segment")}
    per_gpu = F_BARS / 8
    assert widths == pytest.approx({("big", "owner"): per_gpu, ("big", "lent"): 2 * per_gpu,
                                    ("big", "free"): 5 * per_gpu, ("small", "free"): 2 * per_gpu},
                                   abs=0.1)


def test_segments_add_up_to_the_total_when_use_is_unattributed() -> None:
    """GPUs in use by pods nobody is named for (not the provider's) count as other work."""
    row = {"owner": "rise", "total": 8, "free": 2, "owner_use": 1, "lent": {"bair": 2},
           "other_use": 1, "queued": {}}
    parts = segments(row)
    assert [(s.use, s.gpus) for s in parts] == [(Use.OWNER, 1), (Use.LENT, 2), (Use.OTHER, 3),
                                                (Use.FREE, 2)]
    assert sum(s.gpus for s in parts) == row["total"]


def test_an_unreachable_cluster_says_why(seed_rows: list[dict[str, Any]]) -> None:
    rows = [*seed_rows, {**seed_rows[0], "cluster": "campus", "owner": HOSTILE,
                         "reachable": False, "error": f"connection refused {HOSTILE}"}]
    svg = fleet_svg(rows)
    root = parse(svg)
    campus = next(c for c in groups(root, "cluster") if c.get("data-cluster") == "campus")
    assert campus.get("data-reachable") == "no" and not groups(campus, "segment")
    assert f"unreachable: connection refused {HOSTILE}" in title(campus)
    assert "<script>" not in svg


def test_the_fleet_legend_names_every_use(seed_rows: list[dict[str, Any]]) -> None:
    root = parse(fleet_svg(seed_rows))
    assert {u.value for u in Use} <= set(texts(root))
    assert {p.get("id") for p in root.iter(f"{{{NS['s']}}}pattern")} == {
        "fl-lent", "fl-other", "fl-queued"}


def test_no_rows_no_chart() -> None:
    assert fleet_svg([]) == ""


def test_every_mark_is_named_by_its_title_for_screen_readers(seed_rows: list[dict[str, Any]]) -> None:
    """Each bar and mark is a graphics symbol whose first child is its <title> (its accessible
    name); the chart itself is named by its own title and description."""
    for svg in (timeline_svg(recorded("moved-three-clusters")), fleet_svg(seed_rows)):
        root = parse(svg)
        assert root.get("role", "").startswith("graphics-document")
        assert root.get("aria-labelledby", "").split() == [
            root.find("s:title", NS).get("id"), root.find("s:desc", NS).get("id")]
        marks = [g for g in root.iter(f"{{{NS['s']}}}g")
                 if g.get("role", "").startswith("graphics-symbol")]
        assert {g.get("class") for g in marks} >= ({"attempt", "preemption"}
                                                   if "timeline" in root.get("class") else
                                                   {"segment", "queued"})
        assert all(g[0].tag == f"{{{NS['s']}}}title" and g[0].text for g in marks)
