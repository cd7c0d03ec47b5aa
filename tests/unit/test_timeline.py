"""One timeline per task: attempts in order, JSON round trip, the table people read."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_skyshare.timeline import HEADERS, Attempt, Timeline, epoch, format_table

T0 = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC


def attempt(number: int, cluster: str = "rise", **kw: Any) -> Attempt:
    base: dict[str, Any] = {"tier": "owner", "pod": f"romil-train-0a1b2c3d-t1-a{number}",
                            "namespace": "skyshare", "placed_at": T0 + 10 * number}
    base.update(kw)
    return Attempt(number=number, cluster=cluster, **base)


def seed_timeline() -> Timeline:
    """romil-train: borrowed bair, preempted by abbeel, then queued and run on rise."""
    return Timeline((
        attempt(1, "bair", tier="borrower", started_at=T0 + 11, ended_at=T0 + 95.5,
                outcome="Preempted", reason="WorkloadEvictedDueToPreempted",
                message="Preempted to accommodate a workload", preempted_by="abbeel (bair)",
                why="borrows it; 2 Tesla-T4 free"),
        attempt(2, "rise", started_at=T0 + 200, ended_at=T0 + 3661.25, outcome="Succeeded",
                reason="Completed", exit_code=0, why="full; queues as owner (no queue ahead)"),
    ))


def test_empty_timeline() -> None:
    t = Timeline()
    assert t.last is None
    assert t.next_number == 1
    assert (t.preemptions, t.moves) == (0, 0)
    assert t.to_list() == []
    assert t.to_json() == "[]"
    assert Timeline.from_json(t.to_json()) == t


def test_counts() -> None:
    t = Timeline((attempt(1, outcome="Preempted", ended_at=T0), attempt(2, outcome="Lost", ended_at=T0),
                  attempt(3, outcome="Preempted", ended_at=T0), attempt(4, outcome="Failed"),
                  attempt(5)))
    assert t.preemptions == 2
    assert t.moves == 3
    assert t.next_number == 6
    assert t.last is not None and t.last.number == 5


def test_next_number_follows_the_last_attempt_not_the_count() -> None:
    """A timeline rebuilt from a pod annotation may start at a later attempt."""
    t = Timeline((attempt(4),))
    assert t.next_number == 5


def test_add_keeps_order_and_is_immutable() -> None:
    t0 = Timeline()
    t1 = t0.add(attempt(1, "bair"))
    t2 = t1.add(attempt(2, "rise"))
    assert t0.attempts == () and len(t1.attempts) == 1
    assert [(a.number, a.cluster) for a in t2.attempts] == [(1, "bair"), (2, "rise")]
    with pytest.raises(AttributeError):
        t2.attempts = ()  # type: ignore[misc]


def test_update_last_changes_only_the_last() -> None:
    t = Timeline((attempt(1, "bair"), attempt(2, "rise")))
    u = t.update_last(ended_at=T0 + 50, outcome="Preempted", preempted_by="abbeel")
    assert u.attempts[0] == t.attempts[0]
    assert (u.attempts[1].outcome, u.attempts[1].ended_at, u.attempts[1].preempted_by) == (
        "Preempted", T0 + 50, "abbeel")
    assert u.attempts[1].cluster == "rise" and u.attempts[1].number == 2
    assert t.attempts[1].outcome == ""  # the original is untouched
    assert u.last is not None and u.last.finished and not t.attempts[1].finished


def test_update_last_of_empty_timeline() -> None:
    with pytest.raises(ValueError, match="no attempt"):
        Timeline().update_last(outcome="Lost")


def test_update_last_refuses_unknown_fields() -> None:
    with pytest.raises(TypeError):
        Timeline((attempt(1),)).update_last(colour="red")


def test_json_round_trip() -> None:
    t = seed_timeline()
    text = t.to_json()
    assert Timeline.from_json(text) == t
    data = json.loads(text)
    assert [a["number"] for a in data] == [1, 2]
    assert data[0]["preempted_by"] == "abbeel (bair)"
    assert data[1]["exit_code"] == 0
    assert data[0]["exit_code"] is None
    assert ": " not in text and ", " not in text  # compact: it travels in an annotation
    assert list(data[0]) == sorted(data[0])


def test_list_round_trip() -> None:
    t = seed_timeline()
    assert Timeline.from_list(t.to_list()) == t
    assert Timeline.from_list(None) == Timeline()
    assert Timeline.from_json(None) == Timeline() == Timeline.from_json("")


def test_json_is_deterministic() -> None:
    assert seed_timeline().to_json() == seed_timeline().to_json()


finite = st.floats(min_value=0, max_value=4e9, allow_nan=False)
attempts = st.builds(
    Attempt, number=st.integers(1, 10**6), cluster=st.text(max_size=20), tier=st.sampled_from(
        ["owner", "borrower", ""]), pod=st.text(max_size=63), namespace=st.text(max_size=20),
    placed_at=finite, why=st.text(max_size=50), started_at=st.none() | finite,
    ended_at=st.none() | finite, outcome=st.sampled_from(["", "Preempted", "Lost", "Succeeded"]),
    reason=st.text(max_size=30), message=st.text(max_size=100), preempted_by=st.text(max_size=30),
    exit_code=st.none() | st.integers(-255, 255),
)


@settings(max_examples=150, deadline=None, database=None)
@given(st.lists(attempts, max_size=6))
def test_any_timeline_round_trips(items: list[Attempt]) -> None:
    t = Timeline(tuple(items))
    assert Timeline.from_json(t.to_json()) == t
    assert t.preemptions == sum(a.outcome == "Preempted" for a in items)
    assert len(t.rows()) == len(items)


def test_rows() -> None:
    rows = seed_timeline().rows()
    assert rows[0] == ["1", "bair", "borrower", "romil-train-0a1b2c3d-t1-a1", "08:00:10.00",
                       "08:00:11.00", "08:01:35.50", "Preempted", "abbeel (bair)"]
    assert rows[1] == ["2", "rise", "owner", "romil-train-0a1b2c3d-t1-a2", "08:00:20.00",
                       "08:03:20.00", "09:01:01.25", "Succeeded", "Completed"]


def test_rows_of_an_attempt_still_running() -> None:
    row = Timeline((attempt(1, placed_at=0.0),)).rows()[0]
    assert row[4:] == ["00:00:00.00", "-", "-", "running", ""]


def test_table() -> None:
    lines = seed_timeline().table().splitlines()
    assert len(lines) == 4
    assert lines[0].split() == ["#", "cluster", "tier", "pod", "queued", "start", "end", "outcome",
                                "preempted", "by", "/", "reason"]
    assert set(lines[1]) == {"-", " "}
    assert lines[2].startswith("1  bair     borrower  romil-train-0a1b2c3d-t1-a1")
    assert lines[2].endswith("Preempted  abbeel (bair)")
    assert lines[3].endswith("Succeeded  Completed")
    # every column starts at the same offset on every line
    for header in ("cluster", "tier", "pod", "outcome"):
        col = lines[0].index(header)
        assert lines[2][col - 2:col] == "  " and lines[3][col - 2:col] == "  "


def test_table_of_empty_timeline_has_headers_only() -> None:
    lines = Timeline().table().splitlines()
    assert len(lines) == 2
    assert lines[0] == "  ".join(HEADERS)


def test_format_table() -> None:
    text = format_table([["a", "long value"], ["bbbb", ""]], ["h1", "h2"])
    assert text.splitlines() == ["h1    h2", "----  ----------", "a     long value", "bbbb"]


def test_format_table_refuses_ragged_rows() -> None:
    with pytest.raises(ValueError):
        format_table([["only one"]], ["h1", "h2"])


def test_history_written_by_a_newer_version_still_loads() -> None:
    """Adopting a pod whose history annotation has keys this version does not know."""
    item = {"number": 1, "cluster": "bair", "tier": "borrower", "pod": "p-a1",
            "namespace": "skyshare", "placed_at": 1.0, "gpu_seconds": 42}
    tl = Timeline.from_list([item])
    assert [(a.number, a.cluster, a.pod) for a in tl.attempts] == [(1, "bair", "p-a1")]


@pytest.mark.parametrize(("stamp", "expected"), [
    ("2026-11-22T16:28:41Z", 1_795_364_921.0),
    ("2026-11-22T16:28:41+00:00", 1_795_364_921.0),
    ("", None), (None, None), (12, None), ("yesterday", None),
])
def test_epoch_of_kubernetes_timestamps(stamp, expected) -> None:
    assert epoch(stamp) == expected


def test_a_gangs_members_are_a_json_list_and_only_a_list_reads_back() -> None:
    """Airflow's XCom API returned a tuple of members as a string (seen in the gang e2e)."""
    gang = Attempt(1, "den", "owner", "t-a1", "ns", placed_at=1.0, members=("t-a1", "t-a1-r1"))
    (item,) = Timeline((gang,)).to_list()
    assert type(item["members"]) is list
    assert Timeline.from_list(json.loads(json.dumps([item]))).attempts == (gang,)
    assert Timeline.from_list([{**item, "members": "t-a1, t-a1-r1"}]).attempts[0].members == ()
