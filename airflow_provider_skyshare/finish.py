"""What happens once a task has its verdict: the attempts table and the pod's log go to the
task's log, finished pods are deleted as ``on_finish_action`` says, orphans are deleted.

One implementation for both places a verdict is acted on: the trigger (which then ends the
task itself) and the worker (``deferrable=False``, and ``dag.test()``, which runs triggers
in-line and resumes the task with the event instead).
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass
from typing import Any

from airflow_provider_skyshare import clients, kube, pods, taskpods
from airflow_provider_skyshare.claims import follower_id
from airflow_provider_skyshare.fleet import Fleet
from airflow_provider_skyshare.follow import Follow, Orphan, Status, Verdict
from airflow_provider_skyshare.names import BASE_CONTAINER
from airflow_provider_skyshare.outcomes import Outcome


class FinishAction(str, enum.Enum):
    """KubernetesPodOperator's ``on_finish_action`` values."""

    DELETE_POD = "delete_pod"
    DELETE_SUCCEEDED_POD = "delete_succeeded_pod"
    KEEP_POD = "keep_pod"


@dataclass(frozen=True)
class FinishPolicy:
    on_finish_action: FinishAction = FinishAction.DELETE_POD
    get_logs: bool = True
    skip_on_exit_code: tuple[int, ...] = ()  # KubernetesPodOperator's: these end as skipped

    def to_dict(self) -> dict[str, Any]:
        return {"on_finish_action": self.on_finish_action.value, "get_logs": self.get_logs,
                "skip_on_exit_code": list(self.skip_on_exit_code)}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> FinishPolicy:
        data = data or {}
        return cls(FinishAction(data.get("on_finish_action", FinishAction.DELETE_POD.value)),
                   bool(data.get("get_logs", True)),
                   tuple(int(c) for c in data.get("skip_on_exit_code") or ()))


def skip_reason(verdict: Verdict, policy: FinishPolicy) -> str | None:
    """Why the task is skipped rather than failed (or succeeded), else None: as
    KubernetesPodOperator, the pod ran to its end and its base container's exit code is one of
    ``skip_on_exit_code``. A pod that never ran to its end (queue timeout, moves, ...) is not."""
    code = verdict.outcome.exit_code if verdict.outcome else None
    if not verdict.status.pod_finished or code is None or code not in policy.skip_on_exit_code:
        return None
    return f"the pod ended with exit code {code}, which skip_on_exit_code lists: skipping the task"


def current_pod(state: Follow) -> Orphan | None:
    last = state.timeline.last
    return Orphan(last.cluster, last.namespace, last.pod) if last else None


def current_pods(state: Follow) -> list[Orphan]:
    """The current attempt's pods: its one pod, or every member of its gang."""
    last = state.timeline.last
    if last is None:
        return []
    names = last.members or (last.pod,)
    return [Orphan(last.cluster, last.namespace, name) for name in names]


def to_delete(state: Follow, verdict: Verdict, policy: FinishPolicy) -> list[Orphan]:
    """The current pod unless the policy keeps it, and every orphan. A pod that did not run
    to its own end (queue timeout, limit, unreachable) is always deleted: kept, it would
    still run or wait for GPUs with nobody following it."""
    keep = verdict.status.pod_finished and (
        policy.on_finish_action is FinishAction.KEEP_POD
        or (policy.on_finish_action is FinishAction.DELETE_SUCCEEDED_POD
            and verdict.status is not Status.SUCCESS))
    mine = [] if keep else current_pods(state)
    return mine + [o for o in state.orphans if o not in mine]


def failure_message(state: Follow, verdict: Verdict) -> str:
    return (f"{verdict.message or verdict.status.value} [{verdict.status.value}]\n"
            f"attempts:\n{state.timeline.table()}")


async def finish(state: Follow, verdict: Verdict, policy: FinishPolicy,
                 log: logging.Logger) -> None:
    """Log the outcome (and the pod's log), mark the claims with the verdict, then delete
    what must go (in that order: a follower that sees the pod deleted claims after it, and
    must find the verdict there)."""
    fleet = state.job.fleet
    log.info("skyshare: %s after %d attempt(s):\n%s", verdict.status.value,
             len(state.timeline.attempts), state.timeline.table())
    pod = current_pod(state)
    if pod is not None and policy.get_logs and verdict.status.pod_finished:
        await _print_log(fleet, pod, log)
    doomed = to_delete(state, verdict, policy)

    async def here(cluster: str) -> dict[str, int]:
        return {o.pod: pods.attempt_in_name(o.pod) for o in doomed if o.cluster == cluster}

    async def delete(cluster: str, names: list[str]) -> list[str]:
        return [o.pod for o in doomed if o.cluster == cluster and o.pod in names
                and await _delete(fleet, o, log)]

    tomb = taskpods.Tomb(verdict.status.value, state.me or follower_id(), state.timeline,
                         time.time())
    await taskpods.entomb_then_delete(fleet, state.job.identity, log, tomb, here, delete)


async def _print_log(fleet: Fleet, pod: Orphan, log: logging.Logger) -> None:
    cluster = fleet.clusters.get(pod.cluster)
    if cluster is None:
        return
    try:
        text = await kube.read_log(cluster, pod.namespace, pod.pod, BASE_CONTAINER)
    except (kube.KubeError, clients.ClusterConfigError) as exc:
        log.warning("log of %s on %s unavailable: %s", pod.pod, pod.cluster, exc)
        return
    for line in text.splitlines():
        log.info("[%s] %s", pod.pod, line)


async def _delete(fleet: Fleet, pod: Orphan, log: logging.Logger) -> bool:
    cluster = fleet.clusters.get(pod.cluster)
    if cluster is None:
        return False
    try:
        if await kube.delete_pod(cluster, pod.namespace, pod.pod, 0):
            log.info("deleted pod %s on %s", pod.pod, pod.cluster)
        return True
    except (kube.KubeError, clients.ClusterConfigError) as exc:
        log.warning("could not delete pod %s on %s: %s (`skyshare orphans --delete` finds it "
                    "later)", pod.pod, pod.cluster, exc)
        return False


def event_payload(state: Follow, verdict: Verdict) -> dict[str, Any]:
    """The verdict as a trigger event (the path of dag.test() and deferrable=False): the whole
    state travels with it, since dag.test() drops the trigger's kwargs."""
    pod = current_pod(state) if verdict.status is not Status.ABANDONED else None
    return {
        **state.to_dict(),
        "status": verdict.status.value, "message": verdict.message,
        "outcome": verdict.outcome.to_dict() if verdict.outcome else None,
        "cluster": pod.cluster if pod else None, "namespace": pod.namespace if pod else None,
        "pod": pod.pod if pod else None,
    }


def from_event(event: dict[str, Any]) -> tuple[Follow, Verdict]:
    outcome = Outcome.from_dict(event["outcome"]) if event.get("outcome") else None
    return Follow.from_dict(event), Verdict(Status(event["status"]), event.get("message") or "",
                                            outcome)
