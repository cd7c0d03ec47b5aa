"""evidence.from_events and claims.read: the records a follower reads when it did not see
what happened (Events of a deleted pod; another follower's claim)."""

from __future__ import annotations

from airflow_provider_skyshare import claims, evidence
from airflow_provider_skyshare.names import Kind
from airflow_provider_skyshare.timeline import Attempt, Timeline

POD = "train-1a2b3c4d-t1-a1"
# As Kueue v0.x wrote them in the sandbox (kubectl get events -o json), trimmed.
KUEUE_STOPPED = {
    "involvedObject": {"kind": "Pod", "name": POD, "namespace": "skyshare-rise"},
    "reason": "Stopped", "lastTimestamp": "2026-11-29T03:30:10Z",
    "message": "Preempted to accommodate a workload (UID: 68f3a25c-7473-4669-9c51-d08d1c8e4435, "
               "JobUID: e55ded0f-ab78-4319-8b0e-7f185ac93b1f) due to reclamation within the "
               "cohort; preemptor path: /skyshare/skyshare-owner; preemptee path: "
               "/skyshare/skyshare-borrower"}
SCHEDULED = {"involvedObject": {"kind": "Pod", "name": POD}, "reason": "Scheduled",
             "lastTimestamp": "2026-11-29T03:30:01Z", "message": "Successfully assigned"}


def event(reason: str, when: str, name: str = POD, kind: str = "Pod") -> dict:
    return {"involvedObject": {"kind": kind, "name": name}, "reason": reason,
            "lastTimestamp": when, "message": f"{reason} message"}


def test_kueues_stop_event_is_a_preemption_with_its_preemptor() -> None:
    found = evidence.from_events([SCHEDULED, KUEUE_STOPPED], POD)
    assert found.kind is Kind.PREEMPTED and found.by == "kueue"
    assert found.preemptor == "e55ded0f-ab78-4319-8b0e-7f185ac93b1f"


def test_the_latest_telling_event_wins_and_others_are_ignored() -> None:
    events = [event("TaintManagerEviction", "2026-11-29T03:30:20Z"), KUEUE_STOPPED,
              event("Killing", "2026-11-29T03:30:30Z")]
    found = evidence.from_events(events, POD)
    assert (found.kind, found.reason) == (Kind.LOST, evidence.TAINT_REASON)


def test_events_of_other_objects_say_nothing() -> None:
    assert evidence.from_events([SCHEDULED], POD) is None
    assert evidence.from_events([{**KUEUE_STOPPED, "involvedObject": {
        "kind": "Workload", "name": POD}}], POD) is None
    assert evidence.from_events([event("Stopped", "2026-11-29T03:30:20Z", "other")], POD) is None


def test_scheduler_preemption_and_other_kueue_stops() -> None:
    assert evidence.from_events([event("Preempted", "2026-11-29T03:30:20Z")],
                                POD).by == "kube-scheduler"
    stopped = evidence.from_events([event("Stopped", "2026-11-29T03:30:20Z")], POD)
    assert stopped.kind is Kind.LOST and stopped.by == "kueue"


def test_a_claim_round_trips_through_its_lease() -> None:
    history = Timeline((Attempt(1, "bair", "borrower", POD, "skyshare-rise", 10.0,
                                outcome="Preempted"),))
    succ = Attempt(2, "rise", "owner", "train-1a2b3c4d-t1-a2", "skyshare-rise", 12.5)
    body = claims.lease(namespace="skyshare-rise", name=POD, task_key="k", try_number=1,
                        attempt=2, holder="h/1/x", now=12.0, history=history, successor=succ,
                        resource_version="41")
    found = claims.read("bair", body)
    assert found.held == claims.Held("bair", "skyshare-rise", POD, "41")
    assert (found.holder, found.successor, found.history) == ("h/1/x", succ, history)
    assert found.renewed_at == 12.0 and found.duration == claims.CLAIM_SECONDS
    assert body["metadata"]["labels"]["skyshare.dev/attempt"] == "2"


def test_a_damaged_claim_reads_as_no_successor_and_no_history() -> None:
    body = claims.lease(namespace="n", name=POD, task_key="k", try_number=1, attempt=2,
                        holder="h", now=1.0, history=Timeline(), successor=None)
    body["metadata"]["annotations"] = {"skyshare.dev/successor": "{not json",
                                       "skyshare.dev/history": "[{\"number\": 1}]"}
    found = claims.read("bair", body)
    assert found.successor is None and found.history == Timeline()


def test_events_older_than_the_attempt_are_another_pods() -> None:
    """A pod of the same name deleted earlier (a re-created run): its Events are not ours."""
    placed = 1_900_000_000.0  # after KUEUE_STOPPED's 2026-11-29T03:30:10Z
    assert evidence.from_events([KUEUE_STOPPED], POD, since=placed) is None
    assert evidence.from_events([KUEUE_STOPPED], POD, since=0.0) is not None
