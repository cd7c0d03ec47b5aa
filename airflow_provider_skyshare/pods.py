"""The pod of one attempt: deterministic name, labels that find it anywhere, Kueue wiring.

Pure: a JSON pod template (what the DAG author described, KubernetesPodOperator style) plus
the placement becomes the pod for one cluster. Names are deterministic per (dag, task, run,
map index, try, attempt), so creating twice is harmless: the second create gets 409 and the
pod is adopted.
"""

from __future__ import annotations

import copy
import hashlib
import re
import time
from dataclasses import dataclass
from typing import Any

from airflow_provider_skyshare.fleet import Cluster, Tier
from airflow_provider_skyshare.placement import Request
from airflow_provider_skyshare.snapshot import GPU_RESOURCE, PRIORITY_LABEL, QUEUE_LABEL
from airflow_provider_skyshare.timeline import Attempt, Timeline, epoch

PREFIX = "skyshare.dev"
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "airflow-provider-skyshare"
L_TASK_KEY = f"{PREFIX}/task-key"
L_DAG = f"{PREFIX}/dag-id"
L_TASK = f"{PREFIX}/task-id"
L_RUN = f"{PREFIX}/run-id"
L_TRY = f"{PREFIX}/try"
L_ATTEMPT = f"{PREFIX}/attempt"
L_ORG = f"{PREFIX}/org"
L_TIER = f"{PREFIX}/tier"
A_TASK = f"{PREFIX}/task"  # full, unsanitised "dag/task/run[/map]"
A_HISTORY = f"{PREFIX}/history"  # the timeline before this attempt (JSON)
A_REQUEST = f"{PREFIX}/request"
BASE_CONTAINER = "base"
_NOT_LABEL = re.compile(r"[^A-Za-z0-9_.-]+")
_NOT_NAME = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True)
class TaskIdentity:
    dag_id: str
    task_id: str
    run_id: str
    try_number: int = 1
    map_index: int = -1

    @property
    def key(self) -> str:
        """Stable across tries and attempts: finds every pod of this task in any cluster."""
        raw = f"{self.dag_id}\x00{self.task_id}\x00{self.run_id}\x00{self.map_index}"
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    @property
    def path(self) -> str:
        base = f"{self.dag_id}/{self.task_id}/{self.run_id}"
        return base if self.map_index < 0 else f"{base}/{self.map_index}"

    def pod_name(self, attempt: int) -> str:
        slug = _NOT_NAME.sub("-", self.task_id.lower()).strip("-")[:30].strip("-") or "task"
        return f"{slug}-{self.key[:8]}-t{self.try_number}-a{attempt}"

    def selector(self, *, this_try: bool = True) -> str:
        sel = f"{L_TASK_KEY}={self.key}"
        return f"{sel},{L_TRY}={self.try_number}" if this_try else sel

    def to_dict(self) -> dict[str, Any]:
        return {"dag_id": self.dag_id, "task_id": self.task_id, "run_id": self.run_id,
                "try_number": self.try_number, "map_index": self.map_index}


def label_value(value: str) -> str:
    """A valid label value (<= 63 chars); long or odd values keep a hash to stay unique."""
    clean = _NOT_LABEL.sub("_", value).strip("_.-")
    if len(clean) <= 63 and clean == value:
        return clean
    digest = hashlib.sha256(value.encode()).hexdigest()[:8]
    return f"{clean[:54].strip('_.-')}_{digest}".strip("_")


def build(
    template: dict[str, Any],
    *,
    identity: TaskIdentity,
    attempt: int,
    cluster: Cluster,
    tier: Tier,
    request: Request,
    preemptions: int,
    history_json: str = "[]",
) -> dict[str, Any]:
    """The pod (raw JSON) for one attempt on one cluster."""
    pod = copy.deepcopy(template)
    pod.setdefault("apiVersion", "v1")
    pod.setdefault("kind", "Pod")
    meta = pod.setdefault("metadata", {})
    meta["name"] = identity.pod_name(attempt)
    meta["namespace"] = cluster.namespace
    meta.pop("generateName", None)
    labels = meta.setdefault("labels", {}) or {}
    meta["labels"] = labels
    labels.update({
        MANAGED_BY: MANAGER,
        L_TASK_KEY: identity.key,
        L_DAG: label_value(identity.dag_id),
        L_TASK: label_value(identity.task_id),
        L_RUN: label_value(identity.run_id),
        L_TRY: str(identity.try_number),
        L_ATTEMPT: str(attempt),
        L_ORG: label_value(request.org),
        L_TIER: tier.name,
        QUEUE_LABEL: tier.local_queue,
        PRIORITY_LABEL: tier.workload_priority_class,
    })
    annotations = meta.setdefault("annotations", {}) or {}
    meta["annotations"] = annotations
    annotations.update({
        A_TASK: identity.path,
        A_HISTORY: history_json,
        A_REQUEST: f"{request.gpu_product}:{request.gpu_count} org={request.org} "
                   f"user={request.user or '-'}",
    })
    spec = pod.setdefault("spec", {})
    spec["priorityClassName"] = tier.priority_class
    spec.pop("priority", None)  # admission fills it from the class; a stale value is rejected
    spec.setdefault("restartPolicy", "Never")
    node_selector = spec.setdefault("nodeSelector", {}) or {}
    spec["nodeSelector"] = node_selector
    node_selector[cluster.gpu_label] = cluster.gpu_products[request.gpu_product]
    containers = spec.get("containers") or []
    if not containers:
        raise ValueError("the pod template has no container")
    main = next((c for c in containers if c.get("name") == BASE_CONTAINER), containers[0])
    resources = main.setdefault("resources", {}) or {}
    main["resources"] = resources
    for part in ("limits", "requests"):
        resources.setdefault(part, {})
        resources[part] = {**(resources[part] or {}), GPU_RESOURCE: str(request.gpu_count)}
    env = [e for e in main.get("env") or [] if not str(e.get("name", "")).startswith("SKYSHARE_")]
    env += [
        {"name": "SKYSHARE_ATTEMPT", "value": str(attempt)},
        {"name": "SKYSHARE_CLUSTER", "value": cluster.name},
        {"name": "SKYSHARE_PREEMPTIONS", "value": str(preemptions)},
        {"name": "SKYSHARE_TIER", "value": tier.name},
    ]
    main["env"] = env
    return pod


def attempt_of(pod: dict[str, Any]) -> int:
    try:
        return int(((pod.get("metadata") or {}).get("labels") or {}).get(L_ATTEMPT, "0"))
    except ValueError:
        return 0


def timeline_from_pod(cluster: str, pod: dict[str, Any], why: str = "adopted") -> Timeline:
    """The timeline a pod carries (its history annotation) plus the attempt it is itself, placed
    when the pod was created: how a restarted process or the CLI picks up a task's story."""
    meta = pod["metadata"]
    placed = epoch(meta.get("creationTimestamp")) or time.time()
    history = Timeline.from_json((meta.get("annotations") or {}).get(A_HISTORY))
    return history.add(Attempt(
        number=attempt_of(pod), cluster=cluster, tier=(meta.get("labels") or {}).get(L_TIER, ""),
        pod=meta["name"], namespace=meta["namespace"], placed_at=placed, why=why,
    ))
