"""The fence between two followers of one task: who may create the next attempt.

Two followers of one task exist for moments (a triggerer hand-over, a paused triggerer that
resumes, a worker retried while its trigger still runs). Each sees the current attempt end
and would place the next one, perhaps on different clusters: one pod name on two clusters.
The fence is a Lease named after the ended attempt's pod, in the org's namespace, on that
attempt's cluster (and, only when that cluster was lost, on the first other one). Creating it
is atomic (HTTP 409 for the second), renewing it carries its resourceVersion, so exactly
one follower holds the right to create attempt N+1. The holder writes where attempt N+1
went (``successor``) once it is created; a follower that finds another's claim follows that
attempt instead of creating one, or, when the claim has expired without a successor (its
holder died between claim and create), takes it over with the resourceVersion it read;
expiry is measured on the waiting follower's own clock (``follow._claim_taken``).

The Lease also keeps the task's timeline as it was when attempt N ended, so a follower that
restarts from an old timeline walks the chain of claims to the newest attempt: attempt
numbers never repeat and preemptions counted while no follower ran are not forgotten.

Pure: Lease bodies in, Lease bodies out; ``cluster_api`` does the HTTP.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from airflow_provider_skyshare.names import (
    A_HISTORY,
    A_SUCCESSOR,
    L_ATTEMPT,
    L_TASK_KEY,
    L_TRY,
    MANAGED_BY,
    MANAGER,
)
from airflow_provider_skyshare.timeline import Attempt, Timeline, epoch

CLAIM_SECONDS = 60  # a claim without a successor is taken over after this (its holder died)
LEASES = "coordination.k8s.io/v1"


@dataclass(frozen=True)
class Held:
    """A Lease as last read or written: where, and the version a write must match."""

    cluster: str
    namespace: str
    name: str
    resource_version: str


@dataclass(frozen=True)
class Found:
    """A claim as read from its Lease."""

    held: Held
    holder: str
    renewed_at: float
    duration: float
    successor: Attempt | None  # None: its holder has not created the attempt (yet)
    history: Timeline  # the timeline when the claimed-from attempt ended


def leases_path(namespace: str, name: str | None = None) -> str:
    base = f"/apis/{LEASES}/namespaces/{namespace}/leases"
    return f"{base}/{name}" if name else base


def _stamp(now: float) -> str:
    """A Lease's MicroTime."""
    return datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease(*, namespace: str, name: str, task_key: str, try_number: int, attempt: int,
          holder: str, now: float, history: Timeline, successor: Attempt | None,
          resource_version: str = "") -> dict[str, Any]:
    """The Lease that claims attempt ``attempt`` (and records it once made)."""
    meta: dict[str, Any] = {
        "name": name, "namespace": namespace,
        "labels": {MANAGED_BY: MANAGER, L_TASK_KEY: task_key, L_TRY: str(try_number),
                   L_ATTEMPT: str(attempt)},
        "annotations": {A_HISTORY: history.to_json()},
    }
    if successor is not None:
        meta["annotations"][A_SUCCESSOR] = json.dumps(asdict(successor), sort_keys=True)
    if resource_version:
        meta["resourceVersion"] = resource_version
    return {"apiVersion": LEASES, "kind": "Lease", "metadata": meta,
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": CLAIM_SECONDS,
                     "acquireTime": _stamp(now), "renewTime": _stamp(now)}}


def read(cluster: str, body: dict[str, Any]) -> Found:
    """A Lease as a claim. A successor annotation that does not parse counts as none."""
    meta, spec = body.get("metadata") or {}, body.get("spec") or {}
    annotations = meta.get("annotations") or {}
    return Found(
        held=Held(cluster, meta.get("namespace", ""), meta.get("name", ""),
                  meta.get("resourceVersion", "")),
        holder=spec.get("holderIdentity") or "",
        renewed_at=epoch(spec.get("renewTime")) or epoch(meta.get("creationTimestamp")) or 0.0,
        duration=float(spec.get("leaseDurationSeconds") or CLAIM_SECONDS),
        successor=_attempt(annotations.get(A_SUCCESSOR)),
        history=_timeline(annotations.get(A_HISTORY)),
    )


def _timeline(text: str | None) -> Timeline:
    try:
        return Timeline.from_json(text)
    except (ValueError, TypeError, KeyError):  # written by hand, or by a future version
        return Timeline()


def _attempt(text: str | None) -> Attempt | None:
    if not text:
        return None
    try:
        found = Timeline.from_list([json.loads(text)])
    except (ValueError, TypeError, KeyError):
        return None
    return found.last
