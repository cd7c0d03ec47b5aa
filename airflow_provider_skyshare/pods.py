"""The pod of one attempt: deterministic name, labels that find it anywhere, Kueue wiring.

Pure: a JSON pod template (what the DAG author described, KubernetesPodOperator style) plus
the placement becomes the pod for one cluster. Names are deterministic per (dag, task, run,
map index, try, attempt), so creating twice is harmless: the second create gets 409 and the
pod is adopted.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from airflow_provider_skyshare import gang
from airflow_provider_skyshare.fleet import Cluster, Tier
from airflow_provider_skyshare.names import (
    A_HISTORY,
    A_ORPHANS,
    A_REQUEST,
    A_TASK,
    BASE_CONTAINER,
    GPU_RESOURCE,
    L_ATTEMPT,
    L_DAG,
    L_ORG,
    L_RUN,
    L_TASK,
    L_TASK_KEY,
    L_TIER,
    L_TRY,
    MANAGED_BY,
    MANAGER,
    POD_GROUP_LABEL,
    PREFIX,
    PRIORITY_LABEL,
    QUEUE_LABEL,
)
from airflow_provider_skyshare.placement import Request
from airflow_provider_skyshare.timeline import Attempt, Timeline, epoch

__all__ = [  # the names are defined in names; re-exported for existing imports
    "A_HISTORY", "A_REQUEST", "A_TASK", "BASE_CONTAINER", "L_ATTEMPT", "L_DAG", "L_ORG", "L_RUN",
    "L_TASK", "L_TASK_KEY", "L_TIER", "L_TRY", "MANAGED_BY", "MANAGER", "PREFIX", "TaskIdentity",
    "attempt_of", "build", "label_value", "timeline_from_pod",
]
_NOT_LABEL = re.compile(r"[^A-Za-z0-9_.-]+")
_NOT_NAME = re.compile(r"[^a-z0-9-]+")
_ATTEMPT_IN_NAME = re.compile(r"-a(\d+)(?:-r\d+)?$")


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
    orphans: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """The pod (raw JSON) for one attempt on one cluster."""
    pod = copy.deepcopy(template)
    pod.setdefault("apiVersion", "v1")
    pod.setdefault("kind", "Pod")
    meta = pod.setdefault("metadata", {})
    meta["name"] = identity.pod_name(attempt)
    meta["namespace"] = cluster.namespace_of(request.org)  # resolved already in an org view
    meta.pop("generateName", None)
    _mapping(meta, "labels").update(_labels(identity, attempt, tier, request))
    _mapping(meta, "annotations").update({
        A_TASK: identity.path,
        A_HISTORY: history_json,
        A_REQUEST: f"{request.gpu_product}:{request.gpu_count} org={request.org} "
                   f"user={request.user or '-'}",
    })
    if orphans:
        meta["annotations"][A_ORPHANS] = json.dumps(orphans, sort_keys=True)
    spec = pod.setdefault("spec", {})
    spec["priorityClassName"] = tier.priority_class
    spec.pop("priority", None)  # admission fills it from the class; a stale value is rejected
    spec.setdefault("restartPolicy", "Never")
    _mapping(spec, "nodeSelector")[cluster.gpu_label] = cluster.gpu_products[request.gpu_product]
    _fill_main_container(spec, attempt, cluster, tier, request, preemptions)
    return pod


def _mapping(parent: dict[str, Any], key: str) -> dict[str, Any]:
    """parent[key] as a dict, made when missing or null."""
    value = parent.get(key) or {}
    parent[key] = value
    return value


def _labels(identity: TaskIdentity, attempt: int, tier: Tier, request: Request) -> dict[str, str]:
    return {
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
    }


def _fill_main_container(spec: dict[str, Any], attempt: int, cluster: Cluster, tier: Tier,
                         request: Request, preemptions: int) -> None:
    """The GPUs asked for, and where the job runs (SKYSHARE_* variables), on the base
    container (or the first one)."""
    containers = spec.get("containers") or []
    if not containers:
        raise ValueError("the pod template has no container")
    main = containers[main_index(spec)]
    resources = _mapping(main, "resources")
    for part in ("limits", "requests"):
        resources[part] = {**(resources.get(part) or {}), GPU_RESOURCE: str(request.gpu_count)}
    env = [e for e in main.get("env") or [] if not str(e.get("name", "")).startswith("SKYSHARE_")]
    env += [
        {"name": "SKYSHARE_ATTEMPT", "value": str(attempt)},
        {"name": "SKYSHARE_CLUSTER", "value": cluster.name},
        {"name": "SKYSHARE_PREEMPTIONS", "value": str(preemptions)},
        {"name": "SKYSHARE_TIER", "value": tier.name},
    ]
    main["env"] = env


def main_index(spec: dict[str, Any]) -> int:
    """The container that gets the GPUs: the base container, or the first one."""
    containers = spec.get("containers") or []
    return next((i for i, c in enumerate(containers) if c.get("name") == BASE_CONTAINER), 0)


def orphans_of(pod: dict[str, Any]) -> list[dict[str, str]]:
    """The orphans a pod carries (cluster, namespace, pod), for a follower that restarts."""
    text = ((pod.get("metadata") or {}).get("annotations") or {}).get(A_ORPHANS)
    try:
        found = json.loads(text) if text else []
    except ValueError:
        return []
    keys = ("cluster", "namespace", "pod")
    return [{k: str(o[k]) for k in keys} for o in found
            if isinstance(o, dict) and all(isinstance(o.get(k), str) for k in keys)]


def attempt_of(pod: dict[str, Any]) -> int:
    try:
        return int(((pod.get("metadata") or {}).get("labels") or {}).get(L_ATTEMPT, "0"))
    except ValueError:
        return 0


def attempt_in_name(name: str) -> int:
    """The attempt number of a pod named by TaskIdentity.pod_name ('...-t1-a3' -> 3), or of
    a gang member named after it ('...-t1-a3-r1' -> 3); 0 for any other name."""
    found = _ATTEMPT_IN_NAME.search(name)
    return int(found.group(1)) if found else 0


def timeline_from_pod(cluster: str, pod: dict[str, Any], *, now: float,
                      why: str = "adopted") -> Timeline:
    """The timeline a pod carries (its history annotation) plus the attempt it is itself, placed
    when the pod was created (``now`` if the pod does not say): how a restarted process or the
    CLI picks up a task's story."""
    meta = pod["metadata"]
    placed = epoch(meta.get("creationTimestamp")) or now
    history = Timeline.from_json((meta.get("annotations") or {}).get(A_HISTORY))
    size, labels = gang.size_of(pod), meta.get("labels") or {}
    # any member speaks for its gang (rank 0 may be gone): the attempt's pod is its leader's,
    # the name of the pod group gang.members made
    leader = (labels.get(POD_GROUP_LABEL) or meta["name"]) if size > 1 else meta["name"]
    return history.add(Attempt(
        number=attempt_of(pod), cluster=cluster, tier=labels.get(L_TIER, ""),
        pod=leader, namespace=meta["namespace"], placed_at=placed, why=why,
        members=gang.member_names(leader, size) if size > 1 else (),
    ))
