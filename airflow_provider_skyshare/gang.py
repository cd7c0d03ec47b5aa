"""A gang: the N pods of one multi-node attempt (``nodes=N``), placed, admitted, preempted
and moved as one.

Pure. An attempt of a gang is one Kueue pod group on one cluster (label
``kueue.x-k8s.io/pod-group-name``, annotation ``kueue.x-k8s.io/pod-group-total-count``):
Kueue admits all its pods or none, so no member runs alone and a half-admitted gang cannot
hold GPUs another gang waits for. The leader (rank 0) has the attempt's pod name, so the
claims, tombstones, adoption and timeline of a single pod apply to the gang unchanged; the
other members are named after it (``<leader>-r<rank>``). A headless Service and the
variables torchrun reads (``MASTER_ADDR``, ``NNODES``, ``NODE_RANK``, ..., and their
``PET_*`` forms, which torchrun takes as its arguments' defaults) let the members find each
other. Whatever happens to one member happens to the gang: one preempted or lost member
moves them all (``view``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from airflow_provider_skyshare import outcomes
from airflow_provider_skyshare.names import (
    L_ATTEMPT,
    L_RANK,
    L_TASK_KEY,
    L_TRY,
    MANAGED_BY,
    MANAGER,
    POD_GROUP_COUNT,
    POD_GROUP_LABEL,
    POD_GROUP_RETRIABLE,
    TERMINAL_PHASES,
    Kind,
)
from airflow_provider_skyshare.snapshot import NodeGpus

MASTER_PORT = 29500  # torchrun's default rendezvous port
SERVICE_PREFIX = "gang-"  # a Service name must start with a letter; a pod name need not


# -- names ---------------------------------------------------------------------------------
def member_names(leader: str, nodes: int) -> tuple[str, ...]:
    """Every member's pod name, rank order: the leader's is the attempt's own."""
    return (leader, *(f"{leader}-r{rank}" for rank in range(1, nodes)))


def service_name(leader: str) -> str:
    return f"{SERVICE_PREFIX}{leader}"


def rank_of(pod: Mapping[str, Any]) -> int:
    """A member's rank from its label (0 for the leader and for a pod of no gang)."""
    value = ((pod.get("metadata") or {}).get("labels") or {}).get(L_RANK, "0")
    return int(value) if str(value).isdigit() else 0


def size_of(pod: Mapping[str, Any]) -> int:
    """How many members the pod's gang has (1: not a gang)."""
    value = ((pod.get("metadata") or {}).get("annotations") or {}).get(POD_GROUP_COUNT, "1")
    return int(value) if str(value).isdigit() and int(value) > 0 else 1


# -- the objects of one attempt --------------------------------------------------------------
def env(rank: int, nodes: int, leader: str, gpus_per_node: int) -> list[dict[str, str]]:
    """What a member needs to find the others, as torchrun and torch.distributed expect:
    one process per pod reads MASTER_ADDR/MASTER_PORT/WORLD_SIZE/RANK; ``torchrun train.py``
    takes its --nnodes/--node_rank/--master_addr/--master_port/--nproc_per_node from the
    PET_* forms. WORLD_SIZE and RANK count pods (torchrun sets its workers' own)."""
    address = f"{leader}.{service_name(leader)}"
    values = {"MASTER_ADDR": address, "MASTER_PORT": str(MASTER_PORT),
              "WORLD_SIZE": str(nodes), "RANK": str(rank), "NNODES": str(nodes),
              "NODE_RANK": str(rank), "NPROC_PER_NODE": str(gpus_per_node)}
    torchrun = {"PET_MASTER_ADDR": address, "PET_MASTER_PORT": str(MASTER_PORT),
                "PET_NNODES": str(nodes), "PET_NODE_RANK": str(rank),
                "PET_NPROC_PER_NODE": str(gpus_per_node)}
    return [{"name": k, "value": v} for k, v in {**values, **torchrun}.items()]


def members(leader_pod: dict[str, Any], nodes: int, gpus_per_node: int,
            main: int) -> list[dict[str, Any]]:
    """The gang's pods, rank order, from the leader's pod as ``pods.build`` made it: one
    Kueue pod group, each member with its rank, hostname and variables (in the container
    at index ``main``, the one that got the GPUs)."""
    leader = leader_pod["metadata"]["name"]
    out = []
    for rank, name in enumerate(member_names(leader, nodes)):
        pod = copy.deepcopy(leader_pod)
        meta, spec = pod["metadata"], pod["spec"]
        meta["name"] = name
        meta["labels"].update({L_RANK: str(rank), POD_GROUP_LABEL: leader})
        meta["annotations"].update({POD_GROUP_COUNT: str(nodes), POD_GROUP_RETRIABLE: "false"})
        spec["hostname"], spec["subdomain"] = name, service_name(leader)
        container = spec["containers"][main]
        ours = {e["name"] for e in env(rank, nodes, leader, gpus_per_node)}
        container["env"] = [e for e in container.get("env") or [] if e.get("name") not in ours]
        container["env"] += env(rank, nodes, leader, gpus_per_node)
        out.append(pod)
    return out


def service(leader_pod: dict[str, Any]) -> dict[str, Any]:
    """The headless Service that gives each member a DNS name (<pod>.<service>), also before
    it is ready (the leader waits for the others to rendezvous). The shell makes the leader
    its owner, so it goes with the leader's pod."""
    meta = leader_pod["metadata"]
    labels = meta.get("labels") or {}
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": service_name(meta["name"]), "namespace": meta["namespace"],
                     "labels": {MANAGED_BY: MANAGER, **{k: labels[k] for k in (
                         L_TASK_KEY, L_TRY, L_ATTEMPT) if k in labels}}},
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                 "selector": {POD_GROUP_LABEL: meta["name"]},
                 "ports": [{"name": "rendezvous", "port": MASTER_PORT}]},
    }


def owned_by(obj: dict[str, Any], owner: Mapping[str, Any]) -> dict[str, Any]:
    """``obj`` garbage-collected with the pod ``owner`` (which must carry its uid)."""
    meta = owner.get("metadata") or {}
    ref = {"apiVersion": "v1", "kind": "Pod", "name": meta.get("name"), "uid": meta.get("uid")}
    return {**obj, "metadata": {**obj["metadata"], "ownerReferences": [ref]}}


# -- what the members' states say about the gang ----------------------------------------------
@dataclass(frozen=True)
class Member:
    """A member as last seen; ``gone``: deleted, or not found (``unseen_end``: its deletion
    was not seen either, so how it ended is not known)."""

    name: str
    pod: dict[str, Any] | None = None
    gone: bool = False
    unseen_end: bool = False

    @property
    def outcome(self) -> outcomes.Outcome:
        return outcomes.classify(self.pod, "DELETED" if self.gone else "MODIFIED")


def seen(known: tuple[Member, ...], pod: dict[str, Any], deleted: bool) -> tuple[Member, ...]:
    name = (pod.get("metadata") or {}).get("name", "")
    return _put(known, Member(name, pod, deleted))


def gone(known: tuple[Member, ...], name: str) -> tuple[Member, ...]:
    old = next((m for m in known if m.name == name), Member(name))
    return _put(known, replace(old, gone=True, unseen_end=True))


def _put(known: tuple[Member, ...], member: Member) -> tuple[Member, ...]:
    return (*(m for m in known if m.name != member.name), member)


_PROGRESS = {Kind.PENDING: 0, Kind.RUNNING: 1, Kind.SUCCEEDED: 2}


def view(names: tuple[str, ...], known: tuple[Member, ...]) -> Member | None:
    """The member that speaks for the gang, by rule, in order:

    1. a member taken (preempted, lost, gone): the gang is taken, it moves whole;
    2. a member failed: the gang failed;
    3. a member not seen yet: nothing to say (None);
    4. the least advanced member: pending until all run, running until all succeeded.
    """
    mine = [m for m in known if m.name in names]
    for rule in (lambda m: m.outcome.kind.moves or (m.gone and not m.outcome.kind.terminal),
                 lambda m: m.outcome.kind is Kind.FAILED):
        hit = next((m for m in sorted(mine, key=lambda m: names.index(m.name)) if rule(m)), None)
        if hit is not None:
            return hit
    if len(mine) < len(names):
        return None
    return min(mine, key=lambda m: (_PROGRESS.get(m.outcome.kind, 0), names.index(m.name)))


def stopping(names: tuple[str, ...], known: tuple[Member, ...]) -> Member | None:
    """A member still stopping (seen, not gone, not ended): a gang has stopped when none is.
    A member never seen is not waited for (the move deleted every member with no grace)."""
    for member in sorted((m for m in known if m.name in names), key=lambda m: names.index(m.name)):
        phase = ((member.pod or {}).get("status") or {}).get("phase")
        if member.pod is not None and not member.gone and phase not in TERMINAL_PHASES:
            return member
    return None


def staying(names: tuple[str, ...], known: tuple[Member, ...]) -> tuple[str, ...]:
    """The members nobody is deleting yet (not gone, no deletionTimestamp; never seen
    counts: it may exist): those a gang taken must delete itself. One being deleted (Kueue
    preempting the group) keeps its grace period to write a checkpoint."""
    def leaving(name: str) -> bool:
        member = next((m for m in known if m.name == name), None)
        meta = ((member.pod or {}).get("metadata") or {}) if member else {}
        return member is not None and (member.gone or bool(meta.get("deletionTimestamp")))
    return tuple(n for n in names if not leaving(n))


# -- placement: does the whole gang fit on one cluster? --------------------------------------
def slots(nodes: Iterable[NodeGpus], need: int, *, borrowed: bool = False) -> int:
    """How many members (``need`` GPUs each) the nodes can take now; with ``borrowed``, also
    on the GPUs lent to other orgs (the owner reclaims them)."""
    return sum((n.free + (n.borrowed if borrowed else 0)) // need for n in nodes)


def room(nodes: Iterable[NodeGpus], need: int) -> int:
    """How many members the nodes could ever take (all their GPUs)."""
    return sum(n.allocatable // need for n in nodes)
