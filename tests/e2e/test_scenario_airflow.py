"""The seed scenario and the team-queue example through a real scheduler and triggerer."""

from __future__ import annotations

import pytest

from scripts.scenario import run_scenario, run_team_queues

pytestmark = pytest.mark.e2e


def placements(timeline):
    return [(a["cluster"], a["tier"], a["outcome"]) for a in timeline]


def test_seed_scenario_through_real_airflow(airflow_server, admin_pods, no_leaks):
    result = run_scenario(airflow_server, admin_pods, {"romil": "20s", "abbeel": "5s"})
    assert result.states == {"romil": "success", "romil_placed": "success",
                             "romil-train": "success", "abbeel": "success"}
    assert placements(result.timelines["romil"]) == [("rise", "owner", "Succeeded")]
    assert placements(result.timelines["abbeel"]) == [("bair", "owner", "Succeeded")]
    train = result.timelines["romil-train"]
    assert placements(train) == [("bair", "borrower", "Preempted"), ("rise", "owner", "Succeeded")]
    assert train[0]["reason"] == "WorkloadEvictedDueToPreempted"
    assert sum(a["outcome"] == "Preempted" for a in train) == 1
    # the replacement was created right after the preemption was seen
    assert train[1]["placed_at"] - train[0]["ended_at"] < 5
    print(f"scenario wall time {result.wall_seconds:.1f}s; abbeel submitted -> romil-train "
          f"running again {result.recovery_seconds:.1f}s")


def test_team_queues_through_real_airflow(sandbox, airflow_server, admin_pods, no_leaks):
    sandbox.ensure_cluster("campus", gpus=4)
    result = run_team_queues(airflow_server, admin_pods)
    assert result.states == {"team-b-experiment": "success", "team-a-production": "success"}
    assert placements(result.timelines["team-a-production"]) == [("campus", "owner", "Succeeded")]
    assert placements(result.timelines["team-b-experiment"]) == [
        ("campus", "borrower", "Preempted"), ("campus", "borrower", "Succeeded")]
