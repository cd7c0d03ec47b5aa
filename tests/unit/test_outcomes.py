"""Classifying pods, on the pods and watch events recorded from a real sandbox cluster."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_skyshare.outcomes import (
    Kind,
    Outcome,
    classify,
    disruption,
    observed,
    pod_times,
    preemption_cause,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "pods"
NAMES = ["succeeded", "failed", "pending_gated", "running", "kueue_preempted", "scheduler_preempted"]
P, R, S, F, X, L = Kind.PENDING, Kind.RUNNING, Kind.SUCCEEDED, Kind.FAILED, Kind.PREEMPTED, Kind.LOST
KUEUE_UID = "fb3baf97-08bc-40b5-89c8-1d9a3b716b49"

Load = Callable[[str], dict[str, Any]]


def pod_of(load: Load, name: str) -> dict[str, Any]:
    return copy.deepcopy(load(name)["pod"])


def test_every_recorded_fixture_is_here() -> None:
    assert sorted(p.stem for p in FIXTURES.glob("*.json")) == sorted(NAMES)


@pytest.mark.parametrize(("name", "expected"), [
    ("succeeded", Outcome(S, "Completed", exit_code=0)),
    ("failed", Outcome(F, "Error", "", exit_code=3)),
    ("pending_gated", Outcome(P, "QueuedByKueue", "waiting for Kueue to admit the workload")),
    ("running", Outcome(R)),
])
def test_final_state_of_recorded_pods(pod_fixture: Load, name: str, expected: Outcome) -> None:
    assert classify(pod_of(pod_fixture, name)) == expected


def test_kueue_preemption_recorded(pod_fixture: Load) -> None:
    pod = pod_of(pod_fixture, "kueue_preempted")
    out = classify(pod)
    assert out.kind is X
    assert out.by == "kueue"
    assert out.reason == "WorkloadEvictedDueToPreempted"
    assert out.preemptor == KUEUE_UID
    assert out.message.startswith("Preempted to accommodate a workload")
    assert preemption_cause(out.message) == "reclamation within the cohort"
    # the pod was still Running: the condition, not the phase, tells
    assert pod["status"]["phase"] == "Running"


def test_scheduler_preemption_recorded(pod_fixture: Load) -> None:
    out = classify(pod_of(pod_fixture, "scheduler_preempted"))
    assert (out.kind, out.by, out.reason) == (X, "kube-scheduler", "PreemptionByScheduler")
    assert out.message == "default-scheduler: preempting to accommodate a higher priority pod"
    assert out.preemptor == ""  # the scheduler does not name the preemptor
    assert preemption_cause(out.message) == ""


# What the trigger sees, event by event, while following each recorded pod.
EVENT_KINDS = {
    "succeeded": [P, P, P, R, S, S],
    "failed": [P, P, P, R, F, F],
    "pending_gated": [P],
    "running": [P, P, P, R],
    "kueue_preempted": [P, P, P, R, R, X, X, X, X, X],
    "scheduler_preempted": [P, P, R, X, X, X, X],
}


@pytest.mark.parametrize("name", NAMES)
def test_recorded_watch_events(pod_fixture: Load, name: str) -> None:
    events = pod_fixture(name)["events"]
    kinds = [classify(e["object"], e["type"]).kind for e in events]
    assert kinds == EVENT_KINDS[name]


def test_pending_reasons_along_the_way(pod_fixture: Load) -> None:
    """Gated by Kueue, then the gate lifted but not yet scheduled, then bound and starting."""
    events = pod_fixture("succeeded")["events"]
    reasons = [classify(e["object"], e["type"]).reason for e in events[:3]]
    assert reasons == ["QueuedByKueue", "SchedulingGated", "Starting"]


@pytest.mark.parametrize("name", ["kueue_preempted", "scheduler_preempted"])
def test_preemption_is_seen_before_the_pod_is_deleted(pod_fixture: Load, name: str) -> None:
    events = pod_fixture(name)["events"]
    first = next(i for i, e in enumerate(events) if classify(e["object"], e["type"]).kind is X)
    assert not events[first]["object"]["metadata"].get("deletionTimestamp")
    assert events[-1]["type"] == "DELETED"
    assert classify(events[-1]["object"], "DELETED").kind is X  # not Lost: the cause is known


# -- deletion and loss ------------------------------------------------------------------------


def test_pod_gone() -> None:
    assert classify(None) == Outcome(L, "NotFound", "the pod no longer exists", by="unknown")
    assert classify(None).kind.moves


@pytest.mark.parametrize(("name", "phase"), [("running", "Running"), ("pending_gated", "Pending")])
def test_deleted_without_a_cause_is_lost(pod_fixture: Load, name: str, phase: str) -> None:
    out = classify(pod_of(pod_fixture, name), "DELETED")
    assert out == Outcome(L, "Deleted", f"the pod was deleted while {phase}", by="unknown")


def test_deletion_timestamp_is_lost_before_the_delete_event(pod_fixture: Load) -> None:
    pod = pod_of(pod_fixture, "running")
    pod["metadata"]["deletionTimestamp"] = "2026-11-22T16:30:00Z"
    assert classify(pod, "MODIFIED").kind is L


@pytest.mark.parametrize(("name", "kind"), [("succeeded", S), ("failed", F)])
def test_deleting_a_finished_pod_keeps_its_verdict(pod_fixture: Load, name: str, kind: Kind) -> None:
    assert classify(pod_of(pod_fixture, name), "DELETED").kind is kind


# -- disruption edge cases -------------------------------------------------------------------


def with_condition(pod: dict[str, Any], **cond: Any) -> dict[str, Any]:
    pod = copy.deepcopy(pod)
    pod["status"]["conditions"] = [c for c in pod["status"]["conditions"]
                                   if c["type"] != cond["type"]] + [cond]
    return pod


def test_preempted_pod_that_ends_failed_is_still_preempted(pod_fixture: Load) -> None:
    """On a real kubelet the evicted container exits 137 and the phase turns Failed."""
    pod = pod_of(pod_fixture, "kueue_preempted")
    pod["status"]["phase"] = "Failed"
    pod["status"]["containerStatuses"][0]["state"] = {
        "terminated": {"exitCode": 137, "reason": "Error"}}
    out = classify(pod)
    assert out.kind is X and out.exit_code is None and out.preemptor == KUEUE_UID


def test_preemption_after_success_is_success(pod_fixture: Load) -> None:
    pod = with_condition(pod_of(pod_fixture, "succeeded"), type="DisruptionTarget", status="True",
                         reason="PreemptionByScheduler", message="late")
    assert classify(pod).kind is S


@pytest.mark.parametrize(("cond", "expected"), [
    ({"type": "TerminationTarget", "status": "True", "reason": "InactiveWorkload",
      "message": "The workload is deactivated"},
     Outcome(L, "InactiveWorkload", "The workload is deactivated", by="kueue")),
    ({"type": "TerminationTarget", "status": "True", "reason": "Evicted"},
     Outcome(L, "Evicted", "evicted by Kueue", by="kueue")),
    ({"type": "TerminationTarget", "status": "True", "reason": "Preempted", "message": "m"},
     Outcome(X, "Preempted", "m", by="kueue")),
    ({"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager",
      "message": "Taint manager: deleting due to NoExecute taint"},
     Outcome(L, "DeletionByTaintManager", "Taint manager: deleting due to NoExecute taint",
             by="kubernetes")),
    ({"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet"},
     Outcome(L, "TerminationByKubelet", "disrupted", by="kubernetes")),
    ({"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
      "message": "Eviction API: evicting"},
     Outcome(L, "EvictionByEvictionAPI", "Eviction API: evicting", by="kubernetes")),
])
def test_disruptions(pod_fixture: Load, cond: dict[str, Any], expected: Outcome) -> None:
    pod = with_condition(pod_of(pod_fixture, "running"), **cond)
    assert classify(pod) == expected
    assert disruption(pod) == expected


def test_kubelet_termination_of_a_failed_pod_moves_it(pod_fixture: Load) -> None:
    pod = with_condition(pod_of(pod_fixture, "failed"), type="DisruptionTarget", status="True",
                         reason="TerminationByKubelet", message="node shutdown")
    assert classify(pod).kind is L  # not the job's fault


@pytest.mark.parametrize("ctype", ["TerminationTarget", "DisruptionTarget"])
def test_false_conditions_are_ignored(pod_fixture: Load, ctype: str) -> None:
    pod = with_condition(pod_of(pod_fixture, "running"), type=ctype, status="False",
                         reason="PreemptionByScheduler")
    assert classify(pod) == Outcome(R)
    assert disruption(pod) is None


def test_kueue_condition_wins_over_scheduler_condition(pod_fixture: Load) -> None:
    pod = with_condition(pod_of(pod_fixture, "kueue_preempted"), type="DisruptionTarget",
                         status="True", reason="PreemptionByScheduler")
    assert classify(pod).by == "kueue"


# -- failures and pending --------------------------------------------------------------------


def failed_pod(statuses: list[dict[str, Any]], **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "p"}, "status": {"phase": "Failed", "containerStatuses": statuses,
                                                   **status}}


def terminated(name: str, code: int, reason: str = "Error", message: str = "") -> dict[str, Any]:
    t: dict[str, Any] = {"exitCode": code, "reason": reason}
    if message:
        t["message"] = message
    return {"name": name, "state": {"terminated": t}}


def test_failed_reports_the_failing_container() -> None:
    pod = failed_pod([terminated("sidecar", 0, "Completed"),
                      terminated("base", 2, "Error", "CUDA out of memory")])
    assert classify(pod) == Outcome(F, "Error", "CUDA out of memory", exit_code=2)


def test_failed_reports_the_base_container_before_a_failing_sidecar() -> None:
    """skip_on_exit_code means the base container's exit code, as in KubernetesPodOperator."""
    pod = failed_pod([terminated("sidecar", 1, "Error"), terminated("base", 3, "Error", "no data")])
    assert classify(pod) == Outcome(F, "Error", "no data", exit_code=3)


def test_failed_with_only_zero_exits_reports_the_first() -> None:
    pod = failed_pod([terminated("base", 0, "Completed")])
    assert classify(pod) == Outcome(F, "Completed", "", exit_code=0)


def test_failed_without_container_statuses_uses_the_pod_status() -> None:
    pod = failed_pod([], reason="DeadlineExceeded", message="Pod was active on the node longer")
    assert classify(pod) == Outcome(F, "DeadlineExceeded", "Pod was active on the node longer")


def test_failed_with_nothing_at_all() -> None:
    assert classify({"status": {"phase": "Failed"}}) == Outcome(F, "Failed", "")


def test_oom_killed() -> None:
    pod = failed_pod([terminated("base", 137, "OOMKilled")])
    out = classify(pod)
    assert (out.kind, out.reason, out.exit_code) == (F, "OOMKilled", 137)
    assert not out.kind.moves


def waiting(reason: str, message: str = "") -> dict[str, Any]:
    return {"status": {"phase": "Pending", "containerStatuses": [
        {"name": "base", "state": {"waiting": {"reason": reason, "message": message}}}]}}


@pytest.mark.parametrize(("reason", "kind"), [
    ("InvalidImageName", F), ("ErrImageNeverPull", F), ("CreateContainerConfigError", F),
    ("CreateContainerError", F),
    ("ImagePullBackOff", P), ("ErrImagePull", P), ("ContainerCreating", P),
])
def test_waiting_reasons(reason: str, kind: Kind) -> None:
    out = classify(waiting(reason, "details"))
    assert (out.kind, out.reason, out.message) == (kind, reason, "details")


def test_unschedulable_is_pending_with_the_schedulers_words() -> None:
    pod = {"status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."}]}}
    assert classify(pod) == Outcome(P, "Unschedulable",
                                    "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.")


def test_other_scheduling_gates() -> None:
    pod = {"spec": {"schedulingGates": [{"name": "example.com/quota"}, {"name": "b"}]},
           "status": {"phase": "Pending"}}
    assert classify(pod) == Outcome(P, "SchedulingGated", "gated by example.com/quota, b")


@pytest.mark.parametrize("pod", [{}, {"status": {}}, {"status": None, "spec": None}])
def test_bare_pods_are_starting(pod: dict[str, Any]) -> None:
    assert classify(pod) == Outcome(P, "Starting", "")


# -- the Outcome value -----------------------------------------------------------------------


def test_kind_properties() -> None:
    assert {k for k in Kind if k.terminal} == {S, F}
    assert {k for k in Kind if k.moves} == {X, L}
    assert Kind("Preempted") is X and X == "Preempted"


@pytest.mark.parametrize("name", NAMES)
def test_outcome_dict_round_trip(pod_fixture: Load, name: str) -> None:
    out = classify(pod_of(pod_fixture, name))
    d = json.loads(json.dumps(out.to_dict()))
    assert d["kind"] == out.kind.value
    assert Outcome.from_dict(d) == out


def test_describe() -> None:
    assert Outcome(R).describe() == "Running"
    assert Outcome(F, "Error", "boom", exit_code=3).describe() == "Failed (Error) exit code 3 - boom"
    assert Outcome(X, "PreemptionByScheduler", by="kube-scheduler").describe() == (
        "Preempted by kube-scheduler (PreemptionByScheduler)")
    assert Outcome(S, "Completed", exit_code=0).describe() == "Succeeded (Completed) exit code 0"


@pytest.mark.parametrize(("message", "cause"), [
    ("Preempted to accommodate a workload (UID: a, JobUID: b) due to prioritization in the "
     "ClusterQueue; preemptor path: /x", "prioritization in the ClusterQueue"),
    ("... due to reclamation within the cohort", "reclamation within the cohort"),
    ("preempted", ""),
    ("", ""),
])
def test_preemption_cause(message: str, cause: str) -> None:
    assert preemption_cause(message) == cause


@pytest.mark.parametrize(("message", "preemptor"), [
    ("(UID: w, JobUID: 0123abcd-1111-2222-3333-444455556666) due to x",
     "0123abcd-1111-2222-3333-444455556666"),
    ("(UID: w, JobUID: ) due to x", ""),
    ("no uid", ""),
])
def test_kueue_preemptor_uid(message: str, preemptor: str) -> None:
    pod = {"status": {"phase": "Running", "conditions": [
        {"type": "TerminationTarget", "status": "True", "reason": "WorkloadEvictedDueToPreempted",
         "message": message}]}}
    assert classify(pod).preemptor == preemptor


# -- when things happened ------------------------------------------------------------------
def _at(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize(("name", "started", "ended"), [
    ("running", "2026-11-22T16:28:41Z", None),
    ("succeeded", "2026-11-22T16:28:38Z", "2026-11-22T16:28:38Z"),
    ("pending_gated", None, None),
])
def test_pod_times_from_recorded_pods(pod_fixture: Load, name: str, started: str | None,
                                      ended: str | None) -> None:
    assert pod_times(pod_of(pod_fixture, name)) == (
        _at(started) if started else None, _at(ended) if ended else None)


def test_pod_times_takes_the_earliest_start_and_waits_for_every_finish() -> None:
    def cs(state: dict) -> dict:
        return {"state": state}

    pod = {"status": {"containerStatuses": [
        cs({"terminated": {"startedAt": "2026-01-01T00:00:05Z", "finishedAt": "2026-01-01T00:00:09Z"}}),
        cs({"running": {"startedAt": "2026-01-01T00:00:03Z"}}),
    ]}}
    assert pod_times(pod) == (_at("2026-01-01T00:00:03Z"), None)
    pod["status"]["containerStatuses"][1] = cs({"terminated": {
        "startedAt": "2026-01-01T00:00:03Z", "finishedAt": "2026-01-01T00:00:12Z"}})
    assert pod_times(pod) == (_at("2026-01-01T00:00:03Z"), _at("2026-01-01T00:00:12Z"))


@pytest.mark.parametrize("pod", [
    None, {}, {"status": None}, {"status": {"containerStatuses": [{"state": {"waiting": {}}}]}},
    {"status": {"containerStatuses": [{"state": {"running": {"startedAt": "yesterday"}}}]}},
    {"status": {"containerStatuses": [{"state": {"running": {"startedAt": 12}}}]}},
])
def test_pod_times_unknown(pod: Any) -> None:
    assert pod_times(pod) == (None, None)


def test_observed_keeps_live_milliseconds_and_trusts_the_pod_when_seen_late() -> None:
    now = 1_800_000_000.437
    assert observed(None, now) == now
    assert observed(1_800_000_000.0, now) == now  # seen live: the watch's own clock
    assert observed(1_799_999_999.0, now) == now  # within the stamps' resolution
    assert observed(1_799_999_990.0, now) == 1_799_999_990.0  # seen 10 s late
