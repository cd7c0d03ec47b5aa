"""How a pod ended, from its cluster's Events, when the pod itself is gone.

A pod preempted while no follower ran (every triggerer down, a hand-over) is deleted by the
time anyone looks; only the Events that Kueue, the scheduler and the taint manager wrote
about it remain (the API server keeps them for ``--event-ttl``, an hour by default). Without
them the attempt would be recorded as NotFound: the preemption and its preemptor lost.

Pure: a list of Events (raw JSON) in, an ``Outcome`` or None out.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_skyshare.names import Kind
from airflow_provider_skyshare.outcomes import (
    KUEUE_PREEMPTED,
    SCHEDULER_PREEMPTED,
    Outcome,
    preemptor_uid,
)
from airflow_provider_skyshare.timeline import epoch

KUEUE_STOPPED = "Stopped"  # Kueue's Event on a plain pod it evicts (message: why)
SCHEDULER_PREEMPTED_EVENT = "Preempted"  # kube-scheduler's Event on its victim
TAINT_EVICTION = "TaintManagerEviction"  # the taint eviction controller's
EVICTED = "Evicted"  # the kubelet's or the eviction API's
TAINT_REASON = "DeletionByTaintManager"  # the DisruptionTarget reason of the same eviction


def _when(event: dict[str, Any]) -> float:
    for key in ("lastTimestamp", "eventTime", "firstTimestamp"):
        stamp = epoch(event.get(key))
        if stamp is not None:
            return stamp
    return epoch((event.get("metadata") or {}).get("creationTimestamp")) or 0.0


def _outcome(event: dict[str, Any]) -> Outcome | None:
    reason, message = event.get("reason") or "", event.get("message") or ""
    if reason == KUEUE_STOPPED and message.startswith("Preempted"):
        return Outcome(Kind.PREEMPTED, KUEUE_PREEMPTED, message, by="kueue",
                       preemptor=preemptor_uid(message))
    if reason == KUEUE_STOPPED:
        return Outcome(Kind.LOST, reason, message or "stopped by Kueue", by="kueue")
    if reason == SCHEDULER_PREEMPTED_EVENT:
        return Outcome(Kind.PREEMPTED, SCHEDULER_PREEMPTED, message, by="kube-scheduler")
    if reason == TAINT_EVICTION:
        return Outcome(Kind.LOST, TAINT_REASON, message, by="kubernetes")
    if reason == EVICTED:
        return Outcome(Kind.LOST, reason, message, by="kubernetes")
    return None


EVENT_STAMP_SECONDS = 1.0  # Events carry whole seconds


def from_events(events: list[dict[str, Any]], pod: str, since: float = 0.0) -> Outcome | None:
    """The latest Event about ``pod``, written ``since`` (the attempt was placed: an older
    pod of the same name is another), that says how it was taken, as an outcome."""
    found: list[tuple[float, Outcome]] = []
    for event in events:
        about, when = event.get("involvedObject") or {}, _when(event)
        if (about.get("kind"), about.get("name")) != ("Pod", pod):
            continue
        outcome = _outcome(event) if when >= since - EVENT_STAMP_SECONDS else None
        if outcome is not None:
            found.append((when, outcome))
    return max(found, key=lambda item: item[0])[1] if found else None
