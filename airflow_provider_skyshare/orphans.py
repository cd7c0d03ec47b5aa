"""Which provider pods no Airflow task owns any more: pure, given the pod and its task's state.

A pod is owned while its task instance may still follow it: the same try is queued, running or
deferred (or a newer try that Airflow has not recorded yet). Everything else is an orphan: the
task was marked failed or success before a triggerer picked up its trigger, the DAG run was
deleted, or an earlier try's pod sits on a cluster that was unreachable when the try ended.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from airflow_provider_skyshare.pods import A_TASK, L_TRY, TaskIdentity

# States in which the task's current try may still create, follow or adopt its pod.
LIVE_STATES = frozenset({
    "scheduled", "queued", "running", "deferred", "restarting", "up_for_reschedule",
    "awaiting_input",
})


@dataclass(frozen=True)
class TaskState:
    """What Airflow's metadata DB says of a task instance (None there: no such instance)."""

    state: str | None
    try_number: int


def task_of(pod: dict[str, Any]) -> tuple[TaskIdentity, int] | None:
    """The task and try a provider pod belongs to, from its annotation and try label."""
    meta = pod.get("metadata") or {}
    path = (meta.get("annotations") or {}).get(A_TASK) or ""
    parts = path.split("/")
    if len(parts) not in (3, 4) or not all(parts):
        return None
    map_index = -1
    if len(parts) == 4:
        try:
            map_index = int(parts[3])
        except ValueError:
            return None
    try:
        try_number = int((meta.get("labels") or {}).get(L_TRY, ""))
    except ValueError:
        return None
    return TaskIdentity(parts[0], parts[1], parts[2], try_number, map_index), try_number


def why_orphaned(pod_try: int, ti: TaskState | None) -> str:
    """Why no task owns a pod of try `pod_try`, or "" when one may."""
    if ti is None:
        return "no such task instance in Airflow (run or DAG deleted)"
    if pod_try > ti.try_number:
        return ""  # a try Airflow has started but this read of the DB predates
    if pod_try < ti.try_number:
        return f"pod of try {pod_try}; the task is at try {ti.try_number}"
    if ti.state in LIVE_STATES:
        return ""
    return f"the task is {ti.state or 'not scheduled (no state)'}"
