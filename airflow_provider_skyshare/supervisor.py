"""Follows one task across clusters: place, submit, watch, and on preemption place again.

The same async loop runs in the triggerer (deferrable) and in the worker
(``deferrable=False``). Moving preempted work happens here, inside the loop that saw the
preemption, so the replacement pod exists within one probe + one create of the event, not
after a round trip through the scheduler and a worker. All state needed to continue is in
the timeline, which also rides on every pod as an annotation: a restarted trigger looks up
the newest attempt of its task across all clusters and continues from there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from airflow_provider_skyshare import capacity, clients, kube, outcomes, placement, pods, watch
from airflow_provider_skyshare.fleet import Fleet, parse
from airflow_provider_skyshare.outcomes import Kind, Outcome, observed
from airflow_provider_skyshare.placement import Decision, Request
from airflow_provider_skyshare.pods import TaskIdentity
from airflow_provider_skyshare.timeline import Attempt, Timeline

HOUSEKEEPING_SECONDS = 10.0
REBALANCE_PROBE_AGE = 2.0  # queued tasks of one triggerer share a capacity probe this long
REBALANCED = "Rebalanced"
MOVED = "Moved"


class NoPlacement(Exception):
    """Nothing in the fleet can take the work right now (with every cluster's reason)."""


@dataclass(frozen=True)
class Settings:
    max_preemptions: int = 5
    queue_timeout: float | None = None  # seconds an attempt may stay queued
    unreachable_grace: float = 30.0  # seconds a cluster may be unreachable before moving
    on_unreachable: str = "move"  # move | fail
    # Airflow 3.3.2 fails a resumed task when the executor's stale "success" for the deferral
    # exit is processed after the trigger fired (apache/airflow#67287, #72716; seen here 6 s
    # after deferral under load). The verdict waits this long after deferral (short jobs only).
    min_event_delay: float = 15.0
    placement_retry_seconds: float = 30.0  # keep retrying when every cluster is unreachable
    rebalance_after: float = 5.0  # a queued attempt moves when another cluster is free now

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Orphan:
    cluster: str
    namespace: str
    pod: str


class Supervisor:
    def __init__(
        self,
        fleet: Fleet,
        request: Request,
        template: dict[str, Any],
        identity: TaskIdentity,
        settings: Settings,
        timeline: Timeline | None = None,
        log: logging.Logger | None = None,
        started_at: float | None = None,
        orphans: list[Orphan] | None = None,
    ) -> None:
        self.fleet = fleet
        self.request = request
        self.template = template
        self.identity = identity
        self.settings = settings
        self.timeline = timeline or Timeline()
        self.log = log or logging.getLogger(__name__)
        self.started_at = started_at or time.time()
        self.orphans: list[Orphan] = orphans or []
        self.last_decision: Decision | None = None
        self.replacement_latency: list[float] = []  # preemption seen -> replacement created
        self._last_pod: dict[str, Any] | None = None  # the current attempt's pod, last seen

    # -- state that crosses the defer boundary ------------------------------------------
    def state(self) -> dict[str, Any]:
        """JSON-serialisable; trigger kwargs and events carry it."""
        return {
            "fleet": self.fleet.to_dict(),
            "fleet_source": self.fleet.source,
            "request": asdict(self.request),
            "template": self.template,
            "identity": self.identity.to_dict(),
            "settings": self.settings.to_dict(),
            "timeline": self.timeline.to_list(),
            "started_at": self.started_at,
            "orphans": [asdict(o) for o in self.orphans],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], log: logging.Logger | None = None) -> Supervisor:
        return cls(
            fleet=parse(state["fleet"], source=state.get("fleet_source", "<fleet>")),
            request=Request(**state["request"]),
            template=state["template"],
            identity=TaskIdentity(**state["identity"]),
            settings=Settings(**state["settings"]),
            timeline=Timeline.from_list(state["timeline"]),
            log=log,
            started_at=state.get("started_at"),
            orphans=[Orphan(**o) for o in state.get("orphans") or []],
        )

    # -- placing -------------------------------------------------------------------------
    async def place_and_submit(self) -> Attempt:
        """Probe, choose, create; fall through to the next candidate when a cluster refuses."""
        refused: dict[str, str] = {}
        deadline = time.monotonic() + self.settings.placement_retry_seconds
        delay = 0.2
        while True:
            snapshot = await capacity.probe(self.fleet)
            decision = placement.choose(
                self.request, self.fleet, snapshot, self.timeline, now=time.time(), exclude=refused
            )
            self.last_decision = decision
            self.log.info("%s", decision.summary())
            self.log.info("placement of attempt %d:\n%s", self.timeline.next_number, decision.table())
            for cand in decision.candidates:
                attempt = await self._submit(cand, refused)
                if attempt:
                    return attempt
            # Nothing took it. Unreachable clusters may come back: retry for a while.
            transient = any(not c.reachable for c in snapshot.clusters.values()) or any(
                v.startswith("unreachable") for v in refused.values()
            )
            if not transient or time.monotonic() > deadline:
                raise NoPlacement(decision.summary())
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
            refused = {k: v for k, v in refused.items() if not v.startswith("unreachable")}

    async def _submit(self, cand: placement.Candidate, refused: dict[str, str]) -> Attempt | None:
        number = self.timeline.next_number
        body = pods.build(
            self.template, identity=self.identity, attempt=number, cluster=cand.cluster,
            tier=cand.tier, request=self.request, preemptions=self.timeline.preemptions,
            history_json=self.timeline.to_json(),
        )
        name = body["metadata"]["name"]
        try:
            await kube.create_pod(cand.cluster, body)
        except kube.KubeError as exc:
            if exc.status == 409:
                created = await kube.get_pod(cand.cluster, cand.cluster.namespace, name)
                labels = ((created or {}).get("metadata") or {}).get("labels") or {}
                if created is None or labels.get(pods.L_TASK_KEY) != self.identity.key:
                    refused[cand.cluster.name] = f"pod name {name} taken by another object"
                    return None
                self.log.info("adopted existing pod %s on %s (same task, same attempt)",
                              name, cand.cluster.name)
            else:
                why = "unreachable" if exc.unreachable else f"refused the pod (HTTP {exc.status})"
                refused[cand.cluster.name] = f"{why}: {exc.message[:160]}"
                self.log.warning("cluster %s %s; trying the next candidate",
                                 cand.cluster.name, refused[cand.cluster.name])
                return None
        attempt = Attempt(
            number=number, cluster=cand.cluster.name, tier=cand.tier.name, pod=name,
            namespace=cand.cluster.namespace, placed_at=time.time(), why=cand.reason,
        )
        self.timeline = self.timeline.add(attempt)
        self.log.info("attempt %d: pod %s created on %s as %s (%s)", number, name,
                      cand.cluster.name, cand.tier.name, cand.reason)
        return attempt

    # -- finding what already exists -----------------------------------------------------
    async def find_newest(self) -> tuple[str, dict[str, Any]] | None:
        """The newest attempt's pod of this task and try, across all clusters."""
        key, try_ = self.identity.key, str(self.identity.try_number)

        def mine(pod: dict[str, Any]) -> bool:
            labels = (pod.get("metadata") or {}).get("labels") or {}
            return labels.get(pods.L_TASK_KEY) == key and labels.get(pods.L_TRY) == try_

        async def one(name: str) -> list[tuple[str, dict[str, Any]]]:
            cluster = self.fleet.clusters[name]
            try:
                await clients.ready(cluster)  # start-up is not the cluster's answer time
            except clients.ClusterConfigError as exc:
                self.log.warning("cannot look for this task's pods on %s: %s", name, exc)
                return []
            # the shared watch's cache: one list per cluster however many tasks resume
            cached = await watch.hub(cluster, cluster.namespace).snapshot(
                self.fleet.policy.probe_timeout_seconds)
            if cached is not None:
                return [(name, p) for p in cached.values() if mine(p)]
            try:
                listing = await kube.list_pods(cluster, cluster.namespace,
                                               labelSelector=self.identity.selector())
            except kube.KubeError:
                return []
            return [(name, p) for p in listing.get("items") or []]

        found = [x for xs in await asyncio.gather(*(one(n) for n in self.fleet.clusters))
                 for x in xs]
        if not found:
            return None
        return max(found, key=lambda item: pods.attempt_of(item[1]))

    def _adopt(self, cluster: str, pod: dict[str, Any]) -> None:
        self.timeline = pods.timeline_from_pod(cluster, pod)

    async def start(self) -> Attempt:
        """Worker side: adopt this try's newest pod if one exists, else place attempt 1.

        Pods of earlier tries are dead by Airflow's definition (a cluster that was unreachable
        when they failed may still hold one): delete them first so no attempt runs twice.
        """
        await self.reap_earlier_tries()
        newest = await self.find_newest()
        if newest:
            self._adopt(*newest)
            last = self.timeline.last
            assert last is not None
            self.log.info("found attempt %d of this task on %s (pod %s): following it",
                          last.number, last.cluster, last.pod)
            return last
        return await self.place_and_submit()

    async def resume(self) -> None:
        """Trigger side: continue from the newest attempt (a restart may have missed some)."""
        newest = await self.find_newest()
        last = self.timeline.last
        if newest and (last is None or pods.attempt_of(newest[1]) > last.number):
            self._adopt(*newest)
            self.log.info("resumed at attempt %d on %s", self.timeline.last.number, newest[0])

    # -- following -----------------------------------------------------------------------
    async def follow(self) -> dict[str, Any]:
        """Run until the task has a verdict; returns the event payload."""
        try:
            if self.timeline.last is None:
                await self.place_and_submit()
            while True:
                outcome = await self._watch_current()
                now = time.time()
                last = self.timeline.last
                assert last is not None
                started, finished = outcomes.pod_times(self._last_pod)
                if last.started_at is None and started is not None:
                    # whole-second stamps: never before the pod was created
                    started = max(started, last.placed_at)
                    self.timeline = self.timeline.update_last(started_at=started)
                ended = observed(finished, now) if outcome.kind.terminal else now
                ended = max(ended, self.timeline.last.started_at or ended)
                self.timeline = self.timeline.update_last(
                    ended_at=ended, outcome=outcome.kind.value, reason=outcome.reason,
                    message=outcome.message[:500], exit_code=outcome.exit_code,
                    preempted_by=_preempted_by(outcome),
                )
                if outcome.kind == Kind.SUCCEEDED:
                    return await self._event("success", outcome, "the pod succeeded")
                if outcome.kind == Kind.FAILED:
                    return await self._event("failed", outcome, outcome.describe())
                if outcome.reason == "QueueTimeout":
                    return await self._event("queue_timeout", outcome, outcome.message)
                if outcome.reason == REBALANCED:
                    self.timeline = self.timeline.update_last(outcome=MOVED)
                    await self._delete_quietly(last)
                    await self.place_and_submit()
                    continue
                # Preempted or lost: not the job's fault, move it.
                self.log.warning("attempt %d on %s: %s", last.number, last.cluster,
                                 outcome.describe())
                if outcome.reason == "ClusterUnreachable" and self.settings.on_unreachable == "fail":
                    return await self._event("unreachable", outcome, outcome.message)
                if self.timeline.moves > self.settings.max_preemptions:
                    return await self._event(
                        "preemption_limit", outcome,
                        f"moved {self.timeline.moves} times, more than max_preemptions="
                        f"{self.settings.max_preemptions}",
                    )
                seen = time.monotonic()
                preempted = self.timeline
                try:
                    await self.place_and_submit()
                except NoPlacement as exc:
                    return await self._event("no_placement", outcome, str(exc))
                self.replacement_latency.append(time.monotonic() - seen)
                self.log.info("replacement created %.0f ms after the preemption was seen",
                              self.replacement_latency[-1] * 1000)
                # Off the critical path: name who took the GPUs.
                who = await self._name_preemptor(last.cluster, outcome)
                if who:
                    index = len(preempted.attempts) - 1
                    attempts = list(self.timeline.attempts)
                    attempts[index] = replace(attempts[index], preempted_by=who)
                    self.timeline = Timeline(tuple(attempts))
                    self.log.warning("attempt %d was preempted by %s", last.number, who)
                await self.reap_orphans()
        except NoPlacement as exc:
            return await self._event("no_placement", None, str(exc))

    async def _watch_current(self) -> Outcome:
        att = self.timeline.last
        assert att is not None
        cluster = self.fleet.clusters[att.cluster]
        hub = watch.hub(cluster, att.namespace)
        queue = hub.subscribe(att.pod)
        self._last_pod = None
        last_pod: dict[str, Any] | None = None
        down_since: float | None = None
        try:
            try:
                # Known to the shared watch: no request. Not (yet) in its cache: ask, since a
                # pod created a moment ago may not have reached the watch.
                last_pod = hub.cache.get(att.pod) if hub.synced else None
                if last_pod is None:
                    last_pod = await kube.get_pod(cluster, att.namespace, att.pod)
                if last_pod is None:
                    return outcomes.classify(None)
                verdict = self._note(last_pod, "MODIFIED")
                if verdict:
                    return verdict
            except kube.KubeError as exc:
                if not exc.unreachable:
                    raise
                down_since = time.monotonic()
            while True:
                timeout = self._next_check(last_pod)
                if down_since is not None:
                    timeout = max(0.05, self.settings.unreachable_grace
                                  - (time.monotonic() - down_since))
                try:
                    kind, pod, detail = await asyncio.wait_for(queue.get(), timeout)
                except asyncio.TimeoutError:
                    if down_since is not None and (
                        time.monotonic() - down_since >= self.settings.unreachable_grace
                    ):
                        self.orphans.append(Orphan(att.cluster, att.namespace, att.pod))
                        return Outcome(Kind.LOST, "ClusterUnreachable",
                                       f"cluster {att.cluster} unreachable for more than "
                                       f"{self.settings.unreachable_grace:g}s: {hub.error}",
                                       by=att.cluster)
                    verdict = self._queue_verdict(last_pod) or await self._rebalance(last_pod)
                    if verdict:
                        return verdict
                    await self.reap_orphans()
                    continue
                if kind == "UNREACHABLE":
                    if down_since is None:
                        down_since = time.monotonic()
                        self.log.warning("cluster %s unreachable (%s); moving the work after "
                                         "%gs", att.cluster, detail, self.settings.unreachable_grace)
                    continue
                if kind == "RECONNECTED":
                    down_since = None
                    continue
                if kind == "SYNC" and pod is None:
                    return outcomes.classify(last_pod, "DELETED") if last_pod else outcomes.classify(None)
                down_since = None
                if pod is None:
                    continue
                last_pod = pod
                verdict = self._note(pod, "DELETED" if kind == "DELETED" else "MODIFIED")
                if verdict:
                    return verdict
        finally:
            hub.unsubscribe(att.pod, queue)

    def _note(self, pod: dict[str, Any], event_type: str) -> Outcome | None:
        """Record progress; return the outcome when the attempt is over."""
        outcome = outcomes.classify(pod, event_type)
        last = self.timeline.last
        assert last is not None
        self._last_pod = pod
        if outcome.kind == Kind.RUNNING and last.started_at is None:
            started, _ = outcomes.pod_times(pod)
            self.timeline = self.timeline.update_last(
                started_at=max(observed(started, time.time()), last.placed_at))
            self.log.info("attempt %d running on %s", last.number, last.cluster)
        if outcome.kind.terminal or outcome.kind.moves:
            return outcome
        return self._queue_verdict(pod)

    def _queued(self, pod: dict[str, Any] | None) -> bool:
        return pod is not None and outcomes.classify(pod).reason == "QueuedByKueue"

    def _next_check(self, pod: dict[str, Any] | None) -> float:
        """Wake up for housekeeping, or sooner when a queued attempt is due a rebalance check."""
        last = self.timeline.last
        after = self.settings.rebalance_after
        if after and last is not None and self._queued(pod):
            due = last.placed_at + after - time.time()
            return max(0.05, min(HOUSEKEEPING_SECONDS, due if due > 0 else after))
        return HOUSEKEEPING_SECONDS

    async def _rebalance(self, pod: dict[str, Any] | None) -> Outcome | None:
        """A queued attempt moves when another cluster can run it now (a lost race for GPUs)."""
        last = self.timeline.last
        after = self.settings.rebalance_after
        if not after or last is None or not self._queued(pod):
            return None
        if time.time() - last.placed_at < after:
            return None
        snapshot = await capacity.probe_shared(self.fleet, REBALANCE_PROBE_AGE)
        decision = placement.choose(self.request, self.fleet, snapshot, self.timeline,
                                    now=time.time())
        best = decision.chosen
        if best is None or best.cluster.name == last.cluster or best.mode not in ("now", "reclaim"):
            return None
        current = await kube.get_pod(self.fleet.clusters[last.cluster], last.namespace, last.pod)
        if not self._queued(current):
            return None  # admitted meanwhile: stay
        return Outcome(Kind.PENDING, REBALANCED,
                       f"queued on {last.cluster}; {best.cluster.name} can run it now "
                       f"({best.reason})")

    async def _delete_quietly(self, attempt: Attempt) -> None:
        try:
            await kube.delete_pod(self.fleet.clusters[attempt.cluster], attempt.namespace,
                                  attempt.pod, 0)
        except kube.KubeError as exc:
            self.log.warning("could not delete %s on %s: %s", attempt.pod, attempt.cluster, exc)
            self.orphans.append(Orphan(attempt.cluster, attempt.namespace, attempt.pod))

    def _queue_verdict(self, pod: dict[str, Any] | None) -> Outcome | None:
        last = self.timeline.last
        limit = self.settings.queue_timeout
        if not limit or last is None or last.started_at is not None or pod is None:
            return None
        if outcomes.classify(pod).kind != Kind.PENDING:
            return None
        waited = time.time() - last.placed_at
        if waited > limit:
            return Outcome(Kind.PENDING, "QueueTimeout",
                           f"attempt {last.number} queued on {last.cluster} for {waited:.0f}s, "
                           f"more than queue_timeout={limit:g}s")
        return None

    async def _event(self, status: str, outcome: Outcome | None, message: str) -> dict[str, Any]:
        await self.reap_orphans()
        wait = self.started_at + self.settings.min_event_delay - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        last = self.timeline.last
        return {
            "status": status,
            "message": message,
            "outcome": outcome.to_dict() if outcome else None,
            "cluster": last.cluster if last else None,
            "namespace": last.namespace if last else None,
            "pod": last.pod if last else None,
            **self.state(),
        }

    async def _name_preemptor(self, cluster_name: str, outcome: Outcome) -> str:
        """'bair_user/abbeel/<run> via kueue (reclamation within the cohort)', best effort."""
        if outcome.kind != Kind.PREEMPTED or not outcome.preemptor:
            return ""
        try:
            listing = await kube.request(self.fleet.clusters[cluster_name], "GET", "/api/v1/pods",
                                         query={"resourceVersion": "0"}, timeout=5)
        except kube.KubeError:
            return ""
        for pod in listing.get("items") or []:
            meta = pod.get("metadata") or {}
            if meta.get("uid") == outcome.preemptor:
                name = (meta.get("annotations") or {}).get(pods.A_TASK) or (
                    f"pod {meta.get('namespace')}/{meta.get('name')}")
                return f"{name} via {_preempted_by(outcome)}"
        return ""

    # -- cleaning up ---------------------------------------------------------------------
    async def reap_earlier_tries(self) -> list[str]:
        """Delete pods of this task left by earlier Airflow tries, on every reachable cluster."""
        async def one(name: str) -> list[str]:
            cluster = self.fleet.clusters[name]
            try:
                listing = await kube.list_pods(
                    cluster, cluster.namespace, labelSelector=self.identity.selector(this_try=False))
                done = []
                for p in listing.get("items") or []:
                    meta = p["metadata"]
                    try_label = (meta.get("labels") or {}).get(pods.L_TRY, "")
                    stale = try_label.isdigit() and int(try_label) < self.identity.try_number
                    if stale and await kube.delete_pod(cluster, cluster.namespace, meta["name"], 0):
                        done.append(f"{name}/{meta['name']}")
                return done
            except kube.KubeError:
                return []

        if self.identity.try_number <= 1:
            return []
        reaped = [x for xs in await asyncio.gather(*(one(n) for n in self.fleet.clusters))
                  for x in xs]
        if reaped:
            self.log.info("deleted pods of earlier tries: %s", ", ".join(reaped))
        return reaped

    async def reap_orphans(self) -> None:
        """Delete pods left on clusters that were unreachable, once they answer again."""
        kept = []
        for o in self.orphans:
            try:
                if await kube.delete_pod(self.fleet.clusters[o.cluster], o.namespace, o.pod, 0):
                    self.log.info("deleted orphaned pod %s on %s", o.pod, o.cluster)
            except kube.KubeError:
                kept.append(o)
        self.orphans = kept

    async def delete_all(self, grace: int | None = None) -> list[str]:
        """Delete every pod of this task and try on every cluster (kill, mark failed)."""
        async def one(name: str) -> list[str]:
            cluster = self.fleet.clusters[name]
            try:
                listing = await kube.list_pods(cluster, cluster.namespace,
                                               labelSelector=self.identity.selector())
                done = []
                for p in listing.get("items") or []:
                    if await kube.delete_pod(cluster, cluster.namespace, p["metadata"]["name"],
                                             grace):
                        done.append(f"{name}/{p['metadata']['name']}")
                return done
            except kube.KubeError as exc:
                self.log.warning("could not clean up on %s: %s", name, exc)
                return []

        return [x for xs in await asyncio.gather(*(one(n) for n in self.fleet.clusters))
                for x in xs]


def _preempted_by(outcome: Outcome) -> str:
    if outcome.kind != Kind.PREEMPTED:
        return ""
    cause = outcomes.preemption_cause(outcome.message)
    return f"{outcome.by} ({cause})" if cause else f"{outcome.by} ({outcome.reason})"
