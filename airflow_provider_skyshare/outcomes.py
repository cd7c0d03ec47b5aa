"""What a pod's state means for the task: the classification the trigger acts on.

Pure: works on the pod as raw API JSON (camelCase dict), the form watches and events carry.
Disruption conditions are checked before the phase, because a preempted pod on a real
kubelet also ends in phase Failed and must not be reported as the job's own failure.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from airflow_provider_skyshare.names import (
    BASE_CONTAINER,
    FAILED_PHASE,
    KUEUE_GATE,
    SUCCEEDED_PHASE,
    Kind,
    Reason,
)
from airflow_provider_skyshare.timeline import epoch

__all__ = ["KUEUE_GATE", "Kind", "Outcome", "Reason", "classify", "disruption", "observed",
           "pod_times", "preemption_cause", "preemptor_uid"]
KUEUE_PREEMPTED = "WorkloadEvictedDueToPreempted"
SCHEDULER_PREEMPTED = "PreemptionByScheduler"
# Waiting reasons that never resolve on their own: fail fast instead of queueing forever.
PERMANENT_WAITING = {
    "InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError", "CreateContainerError",
}


@dataclass(frozen=True)
class Outcome:
    kind: Kind
    reason: str = ""
    message: str = ""
    exit_code: int | None = None
    by: str = ""  # kueue | kube-scheduler | ... for PREEMPTED/LOST
    preemptor: str = ""  # what took the GPUs, when the message names it

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = self.kind.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Outcome:
        return cls(**{**d, "kind": Kind(d["kind"])})

    def describe(self) -> str:
        parts = [self.kind.value]
        if self.by:
            parts.append(f"by {self.by}")
        if self.reason:
            parts.append(f"({self.reason})")
        if self.exit_code is not None:
            parts.append(f"exit code {self.exit_code}")
        if self.message:
            parts.append(f"- {self.message}")
        return " ".join(parts)


# kueue: "Preempted to accommodate a workload (UID: w, JobUID: j) due to reclamation within
# the cohort; preemptor path: ..."; JobUID is the preempting pod's UID.
_JOB_UID = re.compile(r"JobUID:\s*([0-9a-fA-F-]{8,})")
_DUE_TO = re.compile(r"due to ([^;]+)")


def _conditions(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c.get("type", ""): c for c in (pod.get("status") or {}).get("conditions") or []}


def disruption(pod: dict[str, Any]) -> Outcome | None:
    """Preemption or eviction recorded on the pod, if any."""
    conds = _conditions(pod)
    term = conds.get("TerminationTarget")
    if term and term.get("status") == "True":
        reason, message = term.get("reason", ""), term.get("message", "")
        if reason == KUEUE_PREEMPTED or "Preempted" in reason:
            return Outcome(Kind.PREEMPTED, reason, message, by="kueue", preemptor=preemptor_uid(message))
        return Outcome(Kind.LOST, reason, message or "evicted by Kueue", by="kueue")
    dis = conds.get("DisruptionTarget")
    if dis and dis.get("status") == "True":
        reason, message = dis.get("reason", ""), dis.get("message", "")
        if reason == SCHEDULER_PREEMPTED:
            return Outcome(Kind.PREEMPTED, reason, message, by="kube-scheduler",
                           preemptor=preemptor_uid(message))
        return Outcome(Kind.LOST, reason, message or "disrupted", by="kubernetes")
    return None


def preemptor_uid(message: str) -> str:
    """The preempting pod's UID when the message names it (Kueue does; the scheduler not)."""
    m = _JOB_UID.search(message or "")
    return m.group(1) if m else ""


def preemption_cause(message: str) -> str:
    """'reclamation within the cohort', 'prioritization in the ClusterQueue', ..."""
    m = _DUE_TO.search(message or "")
    return m.group(1).strip() if m else ""


def _terminated(pod: dict[str, Any]) -> dict[str, Any]:
    """The failing container's end, the base container's first: its exit code is the one
    ``skip_on_exit_code`` means (as KubernetesPodOperator reads it)."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    ranked = sorted(statuses, key=lambda cs: cs.get("name") != BASE_CONTAINER)  # stable
    ended = [t for cs in ranked if (t := (cs.get("state") or {}).get("terminated"))]
    return next((t for t in ended if t.get("exitCode", 0) != 0), ended[0] if ended else {})


def pod_times(pod: dict[str, Any] | None) -> tuple[float | None, float | None]:
    """When the pod's containers started and finished, as the kubelet reports them (whole
    seconds): the earliest start, and the latest finish once every container has one."""
    statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
    starts, ends = [], []
    for cs in statuses:
        state = cs.get("state") or {}
        run = state.get("running") or state.get("terminated") or {}
        starts.append(epoch(run.get("startedAt")))
        ends.append(epoch((state.get("terminated") or {}).get("finishedAt")))
    known_starts = [t for t in starts if t is not None]
    known_ends = [t for t in ends if t is not None]
    started = min(known_starts) if known_starts else None
    ended = max(known_ends) if known_ends and len(known_ends) == len(ends) else None
    return started, ended


LIVE_WINDOW = 2.0  # stamps are whole seconds (truncated): closer than this, the watch saw it live


def observed(reported: float | None, now: float) -> float:
    """The time of a change: when it was seen, to the millisecond, unless it was seen late
    (a triggerer that started or restarted after it): then the pod's own whole-second stamp."""
    if reported is None or reported + LIVE_WINDOW >= now:
        return now
    return reported


def classify(pod: dict[str, Any] | None, event_type: str = "MODIFIED") -> Outcome:
    """Classify a pod (raw JSON) as seen in a watch event; None means it no longer exists."""
    if pod is None:
        return Outcome(Kind.LOST, Reason.NOT_FOUND.value, "the pod no longer exists", by="unknown")
    status = pod.get("status") or {}
    phase = status.get("phase", "Pending")
    if phase == SUCCEEDED_PHASE:
        return Outcome(Kind.SUCCEEDED, "Completed", exit_code=0)
    found = disruption(pod)
    if found:
        return found
    if phase == FAILED_PHASE:
        term = _terminated(pod)
        return Outcome(
            Kind.FAILED,
            term.get("reason") or status.get("reason") or "Failed",
            term.get("message") or status.get("message") or "",
            exit_code=term.get("exitCode"),
        )
    if event_type == "DELETED" or (pod.get("metadata") or {}).get("deletionTimestamp"):
        return Outcome(Kind.LOST, Reason.DELETED.value, f"the pod was deleted while {phase}",
                       by="unknown")
    if phase == "Running":
        return Outcome(Kind.RUNNING)
    return _pending(pod)


def _pending(pod: dict[str, Any]) -> Outcome:
    gates = [g.get("name") for g in (pod.get("spec") or {}).get("schedulingGates") or []]
    if KUEUE_GATE in gates:
        return Outcome(Kind.PENDING, Reason.QUEUED_BY_KUEUE.value,
                       "waiting for Kueue to admit the workload")
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in PERMANENT_WAITING:
            return Outcome(Kind.FAILED, waiting["reason"], waiting.get("message", ""))
        if waiting.get("reason"):
            return Outcome(Kind.PENDING, waiting["reason"], waiting.get("message", ""))
    sched = _conditions(pod).get("PodScheduled")
    if sched and sched.get("status") == "False":
        return Outcome(Kind.PENDING, sched.get("reason", "Unschedulable"), sched.get("message", ""))
    if gates:
        return Outcome(Kind.PENDING, Reason.SCHEDULING_GATED.value,
                       f"gated by {', '.join(map(str, gates))}")
    return Outcome(Kind.PENDING, Reason.STARTING.value, "")
