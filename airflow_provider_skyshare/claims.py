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

Once the task has its verdict the Leases are not deleted but kept as tombstones (``entombed``,
labelled with the verdict), and one more is written, named after the last attempt's pod: a
follower that wakes later (a frozen triggerer resumed) and would claim the next attempt reads
the verdict instead, and creates nothing. The workers delete tombstones older than
``TOMBSTONE_SECONDS`` (``taskpods.sweep_tombstones``).

Pure: Lease bodies in, Lease bodies out; ``cluster_api`` does the HTTP.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from airflow_provider_skyshare.names import (
    A_HISTORY,
    A_SUCCESSOR,
    L_ATTEMPT,
    L_TASK_KEY,
    L_TRY,
    L_VERDICT,
    MANAGED_BY,
    MANAGER,
)
from airflow_provider_skyshare.timeline import Attempt, Timeline, epoch

CLAIM_SECONDS = 60  # a claim without a successor is taken over after this (its holder died)
# A tombstone outlives any follower that could still wake: a frozen triggerer's copy of the
# trigger is cancelled when it thaws and finds its triggers reassigned (seconds after it
# runs again); compared with another host's clock, which an hour's margin makes harmless.
TOMBSTONE_SECONDS = 3600
LEASES = "coordination.k8s.io/v1"
KILLED = "killed"  # a tombstone's verdict when the task was killed, marked or cleared


def follower_id() -> str:
    """This follower, unique among every copy of a trigger: host, process, instance."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


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
    verdict: str = ""  # a tombstone: the task has this verdict, nothing more is created


def fallback_cluster(clusters: list[str], ended: str) -> str | None:
    """Where a claim on an attempt of ``ended`` may go when that cluster was lost and does
    not answer: the first other cluster in fleet order (one, so two followers agree)."""
    return next((c for c in clusters if c != ended), None)


def leases_path(namespace: str, name: str | None = None) -> str:
    base = f"/apis/{LEASES}/namespaces/{namespace}/leases"
    return f"{base}/{name}" if name else base


def _stamp(now: float) -> str:
    """A Lease's MicroTime."""
    return datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease(*, namespace: str, name: str, task_key: str, try_number: int, attempt: int,
          holder: str, now: float, history: Timeline, successor: Attempt | None,
          resource_version: str = "", verdict: str = "") -> dict[str, Any]:
    """The Lease that claims attempt ``attempt`` (and records it once made), or with a
    ``verdict``, the tombstone that forbids it."""
    meta: dict[str, Any] = {
        "name": name, "namespace": namespace,
        "labels": {MANAGED_BY: MANAGER, L_TASK_KEY: task_key, L_TRY: str(try_number),
                   L_ATTEMPT: str(attempt), **({L_VERDICT: verdict} if verdict else {})},
        "annotations": {A_HISTORY: history.to_json()},
    }
    if successor is not None:
        meta["annotations"][A_SUCCESSOR] = json.dumps(asdict(successor), sort_keys=True)
    if resource_version:
        meta["resourceVersion"] = resource_version
    return {"apiVersion": LEASES, "kind": "Lease", "metadata": meta,
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": CLAIM_SECONDS,
                     "acquireTime": _stamp(now), "renewTime": _stamp(now)}}


def entombed(body: dict[str, Any], *, verdict: str, holder: str, now: float) -> dict[str, Any]:
    """A claim as read, overwritten as a tombstone. It keeps the read resourceVersion: a
    claim renewed meanwhile is read again rather than overwritten blind."""
    meta = body.get("metadata") or {}
    kept = {k: meta[k] for k in ("name", "namespace", "resourceVersion", "annotations")
            if k in meta}
    return {"apiVersion": LEASES, "kind": "Lease",
            "metadata": {**kept, "labels": {**(meta.get("labels") or {}), L_VERDICT: verdict}},
            "spec": {**(body.get("spec") or {}), "holderIdentity": holder,
                     "renewTime": _stamp(now)}}


def tombstone_expired(body: dict[str, Any], now: float) -> bool:
    """A tombstone last written more than TOMBSTONE_SECONDS ago (never a live claim)."""
    found = read("", body)
    return bool(found.verdict) and now - found.renewed_at > TOMBSTONE_SECONDS


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
        verdict=(meta.get("labels") or {}).get(L_VERDICT, ""),
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
