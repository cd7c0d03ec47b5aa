"""A gang through the shell: the members' watch as one feed, and the supervisor driving a
gang on clusters that replay recorded pods renamed as its members (no Kubernetes)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from dataclasses import asdict
from typing import Any

import pytest

from airflow_provider_skyshare import gang, pods, taskpods, watch
from airflow_provider_skyshare.cluster_api import GangFeed, HubFeed, KubeClusterApi
from airflow_provider_skyshare.fleet import OWNER
from airflow_provider_skyshare.follow import (
    Created,
    Event,
    Follow,
    Job,
    Orphan,
    PodGone,
    PodSeen,
    Settings,
    Status,
)
from airflow_provider_skyshare.names import Kind
from airflow_provider_skyshare.placement import Request
from airflow_provider_skyshare.pods import TaskIdentity
from airflow_provider_skyshare.snapshot import Snapshot
from airflow_provider_skyshare.supervisor import Supervisor
from tests.helpers.watchsource import RelistSource

IDENTITY = TaskIdentity("dag", "train", "run-1")
TEMPLATE = {"spec": {"containers": [{"name": "base", "image": "busybox"}]}}


def renamed(pod: dict[str, Any], name: str) -> dict[str, Any]:
    out = copy.deepcopy(pod)
    out["metadata"]["name"] = name
    return out


def drive(coro) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 10))


# -- the members' feeds as one ---------------------------------------------------------------
class TwoThenOne(RelistSource):
    """The first list has both members; the watch then answers 410; the relist has only the
    leader (the other vanished meanwhile)."""

    def __init__(self, lead: dict[str, Any], other: dict[str, Any]) -> None:
        super().__init__([lead, other], [lead])


def test_the_members_feeds_are_one_and_a_member_gone_is_named(seed_fleet, pod_fixture):
    running = pod_fixture("running")["pod"]
    lead, other = renamed(running, "lead"), renamed(running, "lead-r1")

    async def scenario() -> list[Event | None]:
        hub = watch.PodWatchHub(seed_fleet.clusters["rise"], "skyshare",
                                source=TwoThenOne(lead, other))
        feed = GangFeed([HubFeed(hub, "lead"), HubFeed(hub, "lead-r1")])
        try:
            return [await feed.next(5 if i < 4 else 0.3) for i in range(5)]
        finally:
            feed.close()
            await hub.close()

    events = drive(scenario())
    seen = [e.pod["metadata"]["name"] for e in events if isinstance(e, PodSeen)]
    gone = [e.pod for e in events if isinstance(e, PodGone)]
    assert set(seen) >= {"lead", "lead-r1"}
    assert gone == ["lead-r1"]  # the relist's news, for the member that vanished only
    assert events[-1] is None  # then quiet: the next read times out


def test_any_error_of_a_members_pump_fails_the_reader(seed_fleet, pod_fixture):
    """Not only a broken watch: a pump that dies of anything else (here an event of the wrong
    shape) must fail the reader, not leave that member unwatched in silence."""
    running = pod_fixture("running")["pod"]

    async def scenario() -> None:
        hub = watch.PodWatchHub(seed_fleet.clusters["rise"], "skyshare",
                                source=TwoThenOne(renamed(running, "lead"),
                                                  renamed(running, "lead-r1")))
        other = HubFeed(hub, "lead-r1")
        feed = GangFeed([HubFeed(hub, "lead"), other])
        other.queue.put_nowait(("not", "an event"))  # type: ignore[arg-type]
        try:
            while await feed.next(1) is not None:  # the members' first events, the error
                pass
        finally:
            feed.close()
            await hub.close()

    with pytest.raises(ValueError):
        drive(scenario())


def test_a_gang_watch_that_cannot_subscribe_a_member_closes_the_others(seed_fleet, pod_fixture,
                                                                       monkeypatch):
    running = pod_fixture("running")["pod"]
    hub = None

    async def one(self, cluster: str, namespace: str, pod: str) -> HubFeed:
        if pod != "lead":
            raise RuntimeError("no subscription")
        return HubFeed(hub, pod)

    async def scenario() -> dict:
        nonlocal hub
        hub = watch.PodWatchHub(seed_fleet.clusters["rise"], "skyshare",
                                source=TwoThenOne(renamed(running, "lead"),
                                                  renamed(running, "lead-r1")))
        try:
            with pytest.raises(RuntimeError):
                await KubeClusterApi(seed_fleet, "key").watch_gang(
                    "rise", "skyshare", ("lead", "lead-r1"))
            return dict(hub.subscribers)
        finally:
            await hub.close()

    monkeypatch.setattr(KubeClusterApi, "watch", one)
    assert drive(scenario()) == {}


# -- the supervisor ------------------------------------------------------------------------------
class ReplayFeed:
    def __init__(self, events: list[Event]) -> None:
        self.events = list(events)

    async def next(self, timeout: float | None) -> Event | None:
        if self.events:
            return self.events.pop(0)
        await asyncio.sleep(min(timeout or 0.01, 0.01))
        return None

    def close(self) -> None:
        pass


class GangReplayApi:
    """Each gang created on a cluster plays that cluster's next recorded story, whose events
    name the members by rank ("{0}" the leader, "{1}" the other)."""

    def __init__(self, snapshot: Snapshot, stories: dict[str, list[list[tuple[int, dict, bool]]]]
                 ) -> None:
        self.snapshot, self.stories = snapshot, {k: list(v) for k, v in stories.items()}
        self.created: list[tuple[str, str, str]] = []  # (cluster, kind, name)
        self.deleted: list[str] = []
        self.playing: list[Event] = []

    def probing_early(self, clusters: tuple[str, ...] = ()
                      ) -> contextlib.AbstractAsyncContextManager[Any]:
        return contextlib.nullcontext(lambda: None)

    async def probe(self, shared: bool, clusters: tuple[str, ...] = ()) -> Snapshot:
        return self.snapshot

    async def create_gang(self, cluster: str, leader: dict[str, Any],
                          rest: tuple[dict[str, Any], ...]) -> Event:
        members = [leader, *(o for o in rest if o.get("kind") != "Service")]
        self.created += [(cluster, o.get("kind", "Pod"), o["metadata"]["name"])
                         for o in (leader, *rest)]
        names = [m["metadata"]["name"] for m in members]
        self.playing = [PodSeen(renamed(pod, names[rank]), deleted)
                        for rank, pod, deleted in self.stories[cluster].pop(0)]
        return Created(cluster)

    async def watch_gang(self, cluster: str, namespace: str, names: tuple[str, ...]):
        return ReplayFeed(self.playing)

    async def delete(self, orphan) -> bool:
        self.deleted.append(f"{orphan.cluster}/{orphan.pod}")
        return True

    async def claim(self, action):
        from airflow_provider_skyshare import claims
        from airflow_provider_skyshare.follow import ClaimAnswer, ClaimResult

        body = {**action.lease, "metadata": {**action.lease["metadata"], "namespace": "ns",
                                             "resourceVersion": "1"}}
        return ClaimAnswer(ClaimResult.WON, claims.read(action.fences[0], body),
                           record=action.record)

    async def name_preemptor(self, cluster: str, uid: str) -> str:
        return "bair/abbeel/run"


def test_a_member_preempted_moves_the_gang_and_the_next_gang_succeeds(seed_fleet, cap, snap,
                                                                        pod_fixture):
    last = {n: pod_fixture(n)["events"][-1]["object"] for n in ("running", "succeeded")}
    preempted = [(e["object"], e["type"] == "DELETED")
                 for e in pod_fixture("kueue_preempted")["events"]][-2:]
    # rise full with its own work: the gang borrows bair, whose owner takes it back
    snapshot = snap(cap("rise", (2, 2), (2, 2)), cap("bair", (2, 0), (2, 0)))
    api = GangReplayApi(snapshot, {
        "bair": [[(0, last["running"], False), (1, last["running"], False),
                  *((1, pod, deleted) for pod, deleted in preempted), (0, last["running"], True)]],
        "rise": [[(0, last["running"], False), (1, last["running"], False),
                  (0, last["succeeded"], False), (1, last["succeeded"], False)]],
    })
    job = Job(seed_fleet, Request("T4", 2, "rise", "romil", nodes=2), TEMPLATE, IDENTITY,
              Settings(wait_for_termination=False))
    sup = Supervisor.for_job(job)
    sup.api = api  # type: ignore[assignment]
    # after the move rise has room (its own work ended)
    state = drive(_run(sup, api, snap(cap("rise", (2, 0), (2, 0)), cap("bair", (2, 2), (2, 2)))))
    assert state.verdict is not None and state.verdict.status is Status.SUCCESS
    first, second = state.timeline.attempts
    assert (first.cluster, first.outcome, second.cluster, second.outcome) == (
        "bair", Kind.PREEMPTED.value, "rise", Kind.SUCCEEDED.value)
    assert f"bair/{first.pod}" in api.deleted  # the leader; Kueue deletes the member it took
    kinds = [(c, k) for c, k, _ in api.created]
    assert kinds == [("bair", "Pod"), ("bair", "Service"), ("bair", "Pod"),
                     ("rise", "Pod"), ("rise", "Service"), ("rise", "Pod")]


async def _run(sup: Supervisor, api: GangReplayApi, after: Snapshot):
    async def free_after_first_create() -> None:
        while not api.created:
            await asyncio.sleep(0.001)
        api.snapshot = after

    helper = asyncio.create_task(free_after_first_create())
    try:
        return await sup.run()
    finally:
        helper.cancel()


def test_a_gang_adopted_where_its_names_were_orphans_keeps_every_member(seed_fleet, monkeypatch,
                                                                        pod_fixture):
    """A refused create left the gang's names orphans on rise; the same attempt was made there
    after all (a worker retried): adopted, none of its members is an orphan, from the state
    or carried on the pod, while an orphan elsewhere stays."""
    rise = seed_fleet.clusters["rise"]
    request = Request("T4", 2, "rise", "romil", nodes=2)
    lead = IDENTITY.pod_name(1)
    refused = [Orphan("rise", rise.namespace, n) for n in (lead, f"{lead}-r1")]
    elsewhere = Orphan("bair", "skyshare-bair", lead)
    body = pods.build(TEMPLATE, identity=IDENTITY, attempt=1, cluster=rise,
                      tier=rise.tier(OWNER), request=request, preemptions=0,
                      orphans=[asdict(o) for o in (refused[1], elsewhere)])
    group = gang.members(body, 2, 2, pods.main_index(body["spec"]))
    found = {**pod_fixture("running")["pod"], "metadata": group[0]["metadata"]}

    async def newest(fleet, identity, log, shared=True):
        return "rise", found

    monkeypatch.setattr(taskpods, "find_newest", newest)
    job = Job(seed_fleet, request, TEMPLATE, IDENTITY, Settings())
    sup = Supervisor(Follow(job, orphans=(*refused, elsewhere)), api=object())  # type: ignore[arg-type]
    drive(sup.adopt_newest())
    assert sup.state.timeline.last.members == (lead, f"{lead}-r1")
    assert sup.state.orphans == (elsewhere,)
