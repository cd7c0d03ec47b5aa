"""Names shared by every module: labels, annotations, how an attempt ends, our own reasons.

A leaf: it imports nothing of the provider, so the pure core, the shell, the CLI and the
sandbox tests all spell a label or an outcome the same way, from here.
"""

from __future__ import annotations

from enum import Enum

PREFIX = "skyshare.dev"
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "airflow-provider-skyshare"
MANAGED_SELECTOR = f"{MANAGED_BY}={MANAGER}"  # every pod of the provider

L_TASK_KEY = f"{PREFIX}/task-key"  # hash of (dag, task, run, map index): every try's pods
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
# Pods of this task that may exist where a create's answer was lost (JSON list): kept on the
# next pod, so a restarted follower still deletes them once their cluster answers.
A_ORPHANS = f"{PREFIX}/orphans"
# On the Lease that fences a task's next attempt (claims.py): where that attempt went (JSON).
A_SUCCESSOR = f"{PREFIX}/successor"
# On the same Lease once the task has its verdict (a tombstone): the verdict. A label, so
# the sweep that deletes old tombstones can select them.
L_VERDICT = f"{PREFIX}/verdict"
BASE_CONTAINER = "base"
# A gang (nodes=N): its members' rank (0: the leader, whose pod name is the attempt's).
L_RANK = f"{PREFIX}/rank"

GPU_RESOURCE = "nvidia.com/gpu"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
KUEUE_GATE = "kueue.x-k8s.io/admission"
# Kueue's plain pod groups: the pods of one group are admitted together, all or nothing.
POD_GROUP_LABEL = "kueue.x-k8s.io/pod-group-name"
POD_GROUP_COUNT = "kueue.x-k8s.io/pod-group-total-count"
# "false": Kueue finishes the group's Workload once its pods end, instead of waiting for a
# replacement member (a gang is never repaired in place: it moves whole).
POD_GROUP_RETRIABLE = "kueue.x-k8s.io/retriable-in-group"

# The cluster side of ownership (tenancy.py): each org's namespace says its tier there, and
# one ValidatingAdmissionPolicy holds every pod in such a namespace to that tier.
NS_ORG_LABEL = f"{PREFIX}/org"
NS_TIER_LABEL = f"{PREFIX}/tier"
TIER_POLICY = "skyshare-tier"
_ADMISSION = "/apis/admissionregistration.k8s.io/v1"
NOT_ENFORCED = f"the tier policy {TIER_POLICY} is not enforced"  # a probe's reason, and views'
POLICY_PATHS = (f"{_ADMISSION}/validatingadmissionpolicybindings/{TIER_POLICY}",
                f"{_ADMISSION}/validatingadmissionpolicies/{TIER_POLICY}")
ORG_SERVICE_ACCOUNT = "skyshare"  # each org's credential in its namespace
READER_NAMESPACE = "skyshare-system"
READER_SERVICE_ACCOUNT = "skyshare-operator"  # the cluster's own credential (reads)

SUCCEEDED_PHASE = "Succeeded"
FAILED_PHASE = "Failed"
TERMINAL_PHASES = (SUCCEEDED_PHASE, FAILED_PHASE)


class Kind(str, Enum):
    """What a pod's state means for its attempt (outcomes.classify), and how the timeline
    records an attempt's end. MOVED is the timeline's only: the provider ended a queued attempt
    to run the work elsewhere now (classify never returns it)."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    PREEMPTED = "Preempted"
    LOST = "Lost"
    MOVED = "Moved"

    @property
    def terminal(self) -> bool:
        """The job itself reached a verdict."""
        return self in (Kind.SUCCEEDED, Kind.FAILED)

    @property
    def moves(self) -> bool:
        """Taken from the job (not its fault): placed again, counted against max_preemptions."""
        return self in (Kind.PREEMPTED, Kind.LOST)


class Reason(str, Enum):
    """Reasons the provider itself gives an outcome (Kubernetes' and Kueue's stay strings)."""

    QUEUED_BY_KUEUE = "QueuedByKueue"
    QUEUE_TIMEOUT = "QueueTimeout"
    REBALANCED = "Rebalanced"
    CLUSTER_UNREACHABLE = "ClusterUnreachable"
    NOT_FOUND = "NotFound"
    DELETED = "Deleted"
    STARTING = "Starting"
    SCHEDULING_GATED = "SchedulingGated"
