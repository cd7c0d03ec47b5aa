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

from airflow_provider_skyshare import clients, kube, logstream, pods, taskpods
from airflow_provider_skyshare.claims import follower_id
from airflow_provider_skyshare.fleet import Fleet
from airflow_provider_skyshare.follow import Follow, Orphan, Status, Verdict
from airflow_provider_skyshare.logstream import ContainerLogs, Resume, Target
from airflow_provider_skyshare.names import BASE_CONTAINER, TERMINAL_PHASES
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
    container_logs: ContainerLogs = (BASE_CONTAINER,)  # KPO's: whose logs get_logs shows

    def to_dict(self) -> dict[str, Any]:
        logs = self.container_logs
        return {"on_finish_action": self.on_finish_action.value, "get_logs": self.get_logs,
                "skip_on_exit_code": list(self.skip_on_exit_code),
                "container_logs": logs if isinstance(logs, bool) else list(logs)}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> FinishPolicy:
        data = data or {}
        return cls(FinishAction(data.get("on_finish_action", FinishAction.DELETE_POD.value)),
                   bool(data.get("get_logs", True)),
                   tuple(int(c) for c in data.get("skip_on_exit_code") or ()),
                   logstream.container_logs(data.get("container_logs")))

    @property
    def live_logs(self) -> ContainerLogs:
        """The containers whose logs stream while an attempt runs (none without get_logs)."""
        return self.container_logs if self.get_logs else ()


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
    still run or wait for GPUs with nobody following it. So a gang kept (one member failed)
    keeps only the members seen ended; the others may still run."""
    keep = verdict.status.pod_finished and (
        policy.on_finish_action is FinishAction.KEEP_POD
        or (policy.on_finish_action is FinishAction.DELETE_SUCCEEDED_POD
            and verdict.status is not Status.SUCCESS))
    mine = [p for p in current_pods(state) if not (keep and _ended(state, p.pod))]
    return mine + [o for o in state.orphans if o not in mine]


def _ended(state: Follow, name: str) -> bool:
    """Whether the current attempt's pod ``name`` ran to its own end: its one pod (the
    verdict says), or a gang's member last seen in a terminal phase."""
    last = state.timeline.last
    if last is None or not last.members:
        return True
    seen = next((m.pod for m in state.members if m.name == name), None) or {}
    return (seen.get("status") or {}).get("phase") in TERMINAL_PHASES


def failure_message(state: Follow, verdict: Verdict) -> str:
    return (f"{verdict.message or verdict.status.value} [{verdict.status.value}]\n"
            f"attempts:\n{state.timeline.table()}")


async def finish(state: Follow, verdict: Verdict, policy: FinishPolicy,
                 log: logging.Logger, shown: dict[str, Resume] | None = None) -> None:
    """Log the outcome (and the rest of the pod's log: ``shown`` says how far the live
    stream got), mark the claims with the verdict, then delete what must go (in that order:
    a follower that sees the pod deleted claims after it, and must find the verdict there)."""
    fleet = state.job.fleet
    log.info("skyshare: %s after %d attempt(s):\n%s", verdict.status.value,
             len(state.timeline.attempts), state.timeline.table())
    if policy.get_logs and verdict.status.pod_finished:
        for target in logstream.current(state, policy.container_logs):
            await _print_log(fleet, target, (shown or {}).get(target.container), log)
    doomed = to_delete(state, verdict, policy)

    async def here(cluster: str) -> dict[str, int]:
        return {o.pod: pods.attempt_in_name(o.pod) for o in doomed if o.cluster == cluster}

    async def delete(cluster: str, names: list[str]) -> list[str]:
        return [o.pod for o in doomed if o.cluster == cluster and o.pod in names
                and await _delete(fleet, o, log)]

    tomb = taskpods.Tomb(verdict.status.value, state.me or follower_id(), state.timeline,
                         time.time())
    await taskpods.entomb_then_delete(fleet, state.job.identity, log, tomb, here, delete)


async def _print_log(fleet: Fleet, target: Target, shown: Resume | None,
                     log: logging.Logger) -> None:
    """The container's log after what the live stream showed (all of it when none did)."""
    cluster = fleet.clusters.get(target.cluster)
    if cluster is None:
        return
    resume = (shown or Resume()).reconnected()
    try:
        text = await kube.read_log(cluster, target.namespace, target.pod, target.container,
                                   timestamps=True, since_time=resume.since_time())
    except (kube.KubeError, clients.ClusterConfigError) as exc:
        log.warning("log of %s (%s) on %s unavailable: %s", target.pod, target.container,
                    target.cluster, exc)
        return
    for line in logstream.fresh(text.splitlines(), resume)[0]:
        log.info("%s", target.mark(line))


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


def event_payload(state: Follow, verdict: Verdict,
                  shown: dict[str, Resume] | None = None) -> dict[str, Any]:
    """The verdict as a trigger event (the path of dag.test() and deferrable=False): the whole
    state travels with it, since dag.test() drops the trigger's kwargs; and how far the live
    log was shown, so that the worker prints only the rest."""
    pod = current_pod(state) if verdict.status is not Status.ABANDONED else None
    return {
        **state.to_dict(), "logs_shown": logstream.shown_to_dict(shown or {}),
        "status": verdict.status.value, "message": verdict.message,
        "outcome": verdict.outcome.to_dict() if verdict.outcome else None,
        "cluster": pod.cluster if pod else None, "namespace": pod.namespace if pod else None,
        "pod": pod.pod if pod else None,
    }


def from_event(event: dict[str, Any], fleet: Fleet) -> tuple[Follow, Verdict]:
    """The state and verdict of an event_payload; `fleet` is the one the event names."""
    outcome = Outcome.from_dict(event["outcome"]) if event.get("outcome") else None
    return Follow.from_dict(event, fleet), Verdict(Status(event["status"]), event.get("message") or "",
                                            outcome)
