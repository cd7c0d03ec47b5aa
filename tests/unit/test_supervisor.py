"""The shell around follow.step, on clusters that replay recorded pods (no Kubernetes).

Also the shared watch's relist after 410 Gone, with its two calls replaced: a pod that
vanished while the watch was too old reaches the follower as gone, and the work moves.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from typing import Any

import pytest

from airflow_provider_skyshare import claims, kube, watch
from airflow_provider_skyshare.cluster_api import HubFeed, WatchBroken, feed_event
from airflow_provider_skyshare.follow import (
    Claim,
    ClaimAnswer,
    ClaimResult,
    CreateAnswer,
    Created,
    CreateFailed,
    Event,
    Follow,
    Job,
    Orphan,
    Phase,
    PodGone,
    PodSeen,
    Settings,
    Status,
)
from airflow_provider_skyshare.logstream import LiveLogs, targets
from airflow_provider_skyshare.names import Kind
from airflow_provider_skyshare.outcomes import Outcome
from airflow_provider_skyshare.placement import Request
from airflow_provider_skyshare.pods import TaskIdentity
from airflow_provider_skyshare.snapshot import Snapshot
from airflow_provider_skyshare.supervisor import Supervisor
from tests.helpers.watchsource import RelistSource

IDENTITY = TaskIdentity("dag", "train", "run-1")
TEMPLATE = {"spec": {"containers": [{"name": "base", "image": "busybox"}]}}


class ReplayFeed:
    def __init__(self, events: list[Event]) -> None:
        self.events = list(events)
        self.closed = False

    async def next(self, timeout: float | None) -> Event | None:
        if self.events:
            return self.events.pop(0)
        await asyncio.sleep(min(timeout or 0.01, 0.01))
        return None

    def close(self) -> None:
        self.closed = True


class ReplayApi:
    """Each create on a cluster plays that cluster's next recorded pod."""

    def __init__(self, snapshots: list[Snapshot], scripts: dict[str, list[list[Event]]]) -> None:
        self.snapshots, self.scripts = list(snapshots), {k: list(v) for k, v in scripts.items()}
        self.created: list[tuple[str, str]] = []
        self.deleted: list[Orphan] = []
        self.feeds: list[ReplayFeed] = []
        self.playing: dict[str, list[Event]] = {}
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self.version = 0
        self.home: Snapshot | None = None  # what the home-first probe of this placement saw

    def probing_early(self, clusters: tuple[str, ...] = ()
                      ) -> contextlib.AbstractAsyncContextManager[Any]:
        return contextlib.nullcontext(lambda: None)

    async def probe(self, shared: bool, clusters: tuple[str, ...] = ()) -> Snapshot:
        """The next snapshot; a placement that asked the org's own clusters first and then
        every cluster sees one moment (one snapshot) in both."""
        if self.home is not None:  # the rest of the fleet, right after the home probe
            seen, self.home = self.home, None
            return seen
        seen = self.snapshots.pop(0) if len(self.snapshots) > 1 else self.snapshots[0]
        self.home = seen if clusters else None
        return seen

    async def create(self, cluster: str, pod: dict[str, Any]) -> Event:
        self.home = None
        self.created.append((cluster, pod["metadata"]["name"]))
        self.playing[pod["metadata"]["name"]] = self.scripts[cluster].pop(0)
        return Created(cluster)

    async def watch(self, cluster: str, namespace: str, pod: str) -> ReplayFeed:
        self.feeds.append(ReplayFeed(self.playing[pod]))
        return self.feeds[-1]

    async def get(self, cluster: str, namespace: str, pod: str) -> Event:
        return PodGone()

    async def delete(self, orphan: Orphan) -> bool:
        self.deleted.append(orphan)
        return True

    async def name_preemptor(self, cluster: str, uid: str) -> str:
        return "bair/abbeel/run"

    async def claim(self, action: Claim) -> ClaimAnswer:
        """Leases as the API server keeps them: create-if-absent, update on a matching
        resourceVersion (Kubernetes' own rules, held in a dict)."""
        cluster = action.held.cluster if action.held else action.fences[0]
        name = action.lease["metadata"]["name"]
        current = self.leases.get((cluster, name))
        body = {**action.lease, "metadata": {**action.lease["metadata"],
                                             "namespace": f"skyshare-rise-{cluster}"}}
        if current is not None and (action.held is None or current["metadata"][
                "resourceVersion"] != action.held.resource_version):
            found = claims.read(cluster, current)
            mine = found.holder == action.lease["spec"]["holderIdentity"]
            return ClaimAnswer(ClaimResult.WON if mine else ClaimResult.TAKEN, found,
                               record=action.record)
        self.version += 1
        body["metadata"]["resourceVersion"] = str(self.version)
        self.leases[(cluster, name)] = body
        return ClaimAnswer(ClaimResult.WON, claims.read(cluster, body), record=action.record)

    async def inquire(self, cluster: str, namespace: str, pod: str,
                      since: float) -> Outcome | None:
        return None


def drive(coro) -> Any:
    """Run to the end, or fail: a follow loop that never reaches its verdict is a bug."""
    return asyncio.run(asyncio.wait_for(coro, 10))


def recorded(pod_fixture, name: str) -> list[Event]:
    return [PodSeen(e["object"], deleted=e["type"] == "DELETED")
            for e in pod_fixture(name)["events"]]


def supervisor(fleet, api, **settings: Any) -> Supervisor:
    job = Job(fleet, Request("T4", 2, "rise", "romil"), TEMPLATE, IDENTITY, Settings(**settings))
    return Supervisor(Follow(job), api=api, log=logging.getLogger("test"))


def test_preempted_on_a_borrowed_cluster_moves_home_and_succeeds(seed_fleet, cap, snap,
                                                                 pod_fixture, caplog):
    rise_full = snap(cap("rise", (2, 2)), cap("bair", (2, 0)))
    rise_free = snap(cap("rise", (2, 0)), cap("bair", (2, 2)))
    api = ReplayApi([rise_full, rise_free], {
        "bair": [recorded(pod_fixture, "kueue_preempted")],
        "rise": [recorded(pod_fixture, "succeeded")]})
    caplog.set_level(logging.INFO, "test")
    state = drive(supervisor(seed_fleet, api).run())
    assert state.verdict.status is Status.SUCCESS
    assert api.created == [("bair", IDENTITY.pod_name(1)), ("rise", IDENTITY.pod_name(2))]
    first, second = state.timeline.attempts
    assert (first.outcome, second.outcome) == (Kind.PREEMPTED.value, Kind.SUCCEEDED.value)
    assert first.preempted_by.startswith("bair/abbeel/run via kueue (")
    assert all(feed.closed for feed in api.feeds)
    assert "replacement created" in caplog.text  # one readable line per decision


class RecordedLiveLogs(LiveLogs):
    """What the supervisor asks to stream after each step (the streams themselves are
    tests/unit/test_logstream.py's)."""

    def __init__(self, fleet) -> None:
        super().__init__(fleet, ("base",), logging.getLogger("test"))
        self.asked: list[frozenset] = []
        self.stopped = 0

    def sync(self, state: Follow) -> None:
        wanted = targets(state, self.wanted)
        if not self.asked or self.asked[-1] != wanted:
            self.asked.append(wanted)

    async def stop(self) -> None:
        self.stopped += 1


def test_the_live_log_follows_the_move_and_stops_with_the_verdict(seed_fleet, cap, snap,
                                                                   pod_fixture):
    api = ReplayApi([snap(cap("rise", (2, 2)), cap("bair", (2, 0))),
                     snap(cap("rise", (2, 0)), cap("bair", (2, 2)))], {
        "bair": [recorded(pod_fixture, "kueue_preempted")],
        "rise": [recorded(pod_fixture, "succeeded")]})
    sup = supervisor(seed_fleet, api, wait_for_termination=False)
    sup.live = live = RecordedLiveLogs(sup.job.fleet)
    state = drive(sup.run())
    assert state.verdict.status is Status.SUCCESS
    streamed = [{(t.attempt, t.cluster) for t in asked} for asked in live.asked]
    assert streamed == [set(), {(1, "bair")}, set(), {(2, "rise")}, set()]
    assert live.stopped == 1


class GonePreemptorApi(ReplayApi):
    async def name_preemptor(self, cluster: str, uid: str) -> str:
        return ""  # the preempting pod finished and was deleted before the lookup


def test_a_preemptor_gone_before_the_lookup_is_recorded_by_its_uid(seed_fleet, cap, snap,
                                                                   pod_fixture):
    api = GonePreemptorApi([snap(cap("rise", (2, 2)), cap("bair", (2, 0))),
                            snap(cap("rise", (2, 0)), cap("bair", (2, 2)))], {
        "bair": [recorded(pod_fixture, "kueue_preempted")],
        "rise": [recorded(pod_fixture, "succeeded")]})
    state = drive(supervisor(seed_fleet, api).run())
    first = state.timeline.attempts[0]
    assert first.preempted_by.startswith("pod uid ") and "(gone) via kueue (" in first.preempted_by


def test_place_stops_once_the_first_attempt_exists(seed_fleet, cap, snap, pod_fixture):
    api = ReplayApi([snap(cap("rise", (2, 0)), cap("bair", (2, 0)))],
                    {"rise": [recorded(pod_fixture, "succeeded")]})
    sup = supervisor(seed_fleet, api)
    state = drive(sup.run(until=Phase.WATCHING))
    assert state.phase is Phase.WATCHING and state.verdict is None
    assert api.created == [("rise", IDENTITY.pod_name(1))]
    assert api.feeds == []  # the worker places; watching is the trigger's


class LostAnswerApi(ReplayApi):
    """The first create on rise stores the pod but its answer is lost (a timeout)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.stored: dict[str, dict[str, Any]] = {}
        self.gets: list[str] = []

    async def create(self, cluster: str, pod: dict[str, Any]) -> Event:
        event = await super().create(cluster, pod)
        if cluster == "rise" and not self.stored:
            self.stored[pod["metadata"]["name"]] = pod
            return CreateFailed(cluster, CreateAnswer.NONE, "HTTP 0 Unreachable: timed out")
        return event

    async def get(self, cluster: str, namespace: str, pod: str) -> Event:
        self.gets.append(f"{cluster}/{pod}")
        return PodSeen(self.stored[pod]) if pod in self.stored else PodGone()


def test_a_create_whose_answer_was_lost_is_found_and_followed_not_made_twice(
        seed_fleet, cap, snap, pod_fixture):
    api = LostAnswerApi([snap(cap("rise", (2, 0)), cap("bair", (2, 0)))],
                        {"rise": [recorded(pod_fixture, "succeeded")]})
    state = drive(supervisor(seed_fleet, api).run())
    assert state.verdict.status is Status.SUCCESS
    assert api.created == [("rise", IDENTITY.pod_name(1))]  # bair was never tried
    assert api.gets == [f"rise/{IDENTITY.pod_name(1)}"] and api.deleted == []


def test_failed_job_fails_the_task(seed_fleet, cap, snap, pod_fixture):
    api = ReplayApi([snap(cap("rise", (2, 0)), cap("bair", (2, 0)))],
                    {"rise": [recorded(pod_fixture, "failed")]})
    state = drive(supervisor(seed_fleet, api).run())
    assert state.verdict.status is Status.FAILED and len(state.timeline.attempts) == 1


def test_an_unknown_action_fails_loudly(seed_fleet, cap, snap):
    api = ReplayApi([snap(cap("rise", (2, 0)))], {})
    sup = supervisor(seed_fleet, api)
    with pytest.raises(TypeError, match="unknown action"):
        asyncio.run(sup._execute(object()))  # type: ignore[arg-type]


# -- the shared watch: relist after 410 Gone ---------------------------------------------------
class GoneSource(RelistSource):
    """The first list has the pod; the watch then answers 410; the relist does not have it."""

    def __init__(self, pod: dict[str, Any]) -> None:
        super().__init__([pod], [])


def test_a_pod_gone_during_a_410_reaches_the_follower_as_gone(seed_fleet, pod_fixture):
    pod = copy.deepcopy(pod_fixture("running")["pod"])
    name = pod["metadata"]["name"]

    async def scenario() -> list[Event]:
        hub = watch.PodWatchHub(seed_fleet.clusters["rise"], "skyshare", source=GoneSource(pod))
        feed = HubFeed(hub, name)
        try:
            return [await feed.next(5), await feed.next(5)]
        finally:
            feed.close()
            await hub.close()

    first, second = drive(scenario())
    assert isinstance(first, PodSeen) and first.pod["metadata"]["name"] == name
    assert isinstance(second, PodGone)


@pytest.mark.parametrize(("change", "pod", "expected"), [
    (watch.Change.SYNC, None, PodGone),
    (watch.Change.SYNC, {"metadata": {}}, PodSeen),
    (watch.Change.ADDED, {"metadata": {}}, PodSeen),
    (watch.Change.MODIFIED, {"metadata": {}}, PodSeen),
    (watch.Change.DELETED, {"metadata": {}}, PodSeen),
])
def test_feed_events(change, pod, expected):
    event = feed_event(change, pod, "")
    assert isinstance(event, expected)
    if isinstance(event, PodSeen):
        assert event.deleted is (change is watch.Change.DELETED)


class BuggySource(GoneSource):
    """A list that answers something the hub cannot read: a bug, not a cluster down."""

    async def list(self, cluster, namespace) -> dict[str, Any]:
        return {"items": [{"no": "metadata"}], "metadata": {"resourceVersion": "7"}}


def test_a_bug_in_the_shared_watch_fails_its_followers_instead_of_moving_them(seed_fleet):
    async def scenario() -> None:
        hub = watch.PodWatchHub(seed_fleet.clusters["rise"], "skyshare", source=BuggySource({}))
        feed = HubFeed(hub, "train")
        try:
            await feed.next(5)
        finally:
            feed.close()
            await hub.close()

    with pytest.raises(WatchBroken, match="shared pod watch failed: KeyError"):
        drive(scenario())


def test_feed_events_for_the_cluster_itself():
    assert feed_event(watch.Change.UNREACHABLE, None, "refused").detail == "refused"
    assert type(feed_event(watch.Change.RECONNECTED, None, "")).__name__ == "Reconnected"
    assert feed_event(watch.Change.MODIFIED, None, "") is None


class EarlyApi(ReplayApi):
    """Records what place() does with the early probe."""

    def __init__(self, snapshots: list[Snapshot]) -> None:
        super().__init__(snapshots, {})
        self.early: list[str] = []

    @contextlib.asynccontextmanager
    async def probing_early(self, clusters=()):
        self.early.append("started")
        yield lambda: self.early.append("dropped")
        self.early.append("ended")


@pytest.mark.parametrize(("try_number", "found", "expected"), [
    (1, False, ["started", "ended"]),  # probes while it searches, then places with it
    (1, True, ["started", "dropped", "ended"]),  # adopted: the early probe predates that
    (2, False, []),  # earlier tries' pods are deleted first: it probes after that
])
def test_place_probes_during_the_search_only_on_a_first_try(seed_fleet, cap, snap, monkeypatch,
                                                            try_number, found, expected):
    from dataclasses import replace

    from airflow_provider_skyshare import pods, taskpods
    from airflow_provider_skyshare.fleet import OWNER

    identity = replace(IDENTITY, try_number=try_number)
    rise = seed_fleet.clusters["rise"]
    request = Request("T4", 2, "rise", "romil")
    pod = pods.build(TEMPLATE, identity=identity, attempt=1, cluster=rise,
                     tier=rise.tier(OWNER), request=request, preemptions=0)
    searched: list[bool] = []

    async def nothing(*args, **kwargs):
        return []

    async def newest(fleet, ident, log, shared=True):
        searched.append(shared)
        return ("rise", pod) if found else None

    async def until(self, until):
        return self.state

    monkeypatch.setattr(taskpods, "sweep_tombstones", nothing)
    monkeypatch.setattr(taskpods, "reap_earlier_tries", nothing)
    monkeypatch.setattr(taskpods, "find_newest", newest)
    monkeypatch.setattr(Supervisor, "run", until)
    api = EarlyApi([snap(cap("rise", (2, 0)))])
    job = Job(seed_fleet, request, TEMPLATE, identity, Settings())
    state = drive(Supervisor(Follow(job), api=api, log=logging.getLogger("test")).place())
    assert api.early == expected
    assert searched == [False]  # one list per cluster, not the shared watch of each
    assert (state.timeline.last is not None) is found


class CountingSource(RelistSource):
    """Counts lists; `fail` makes each list fail as an unreachable cluster's does."""

    def __init__(self, *lists, fail: bool = False) -> None:
        super().__init__(*lists)
        self.listed, self.fail = 0, fail

    async def list(self, cluster, namespace):
        self.listed += 1
        await asyncio.sleep(0.05)  # a busy triggerer's answer comes late
        if self.fail:
            raise kube.KubeError("rise", 0, "Unreachable", "connection refused")
        return await super().list(cluster, namespace)

    async def _watch(self):
        await asyncio.sleep(3600)  # a quiet namespace
        yield {}


def test_thousands_resuming_at_once_share_one_list_and_an_unreachable_cluster_answers_soon(
        seed_fleet):
    """PodWatchHub.snapshot: every resuming task waits for the one list (a triggerer's own
    late answer must not turn into a list per task), and a cluster that fails says so at
    once instead of after the wait."""
    pod = {"metadata": {"name": "p", "uid": "u"}}

    async def main(fail: bool) -> tuple[list[Any], int, float]:
        hub = watch.PodWatchHub(seed_fleet.clusters["rise"], "ns",
                                CountingSource([pod], fail=fail))
        start = asyncio.get_running_loop().time()
        got = await asyncio.gather(*(hub.snapshot(30.0) for _ in range(1000)))
        took = asyncio.get_running_loop().time() - start
        await hub.close()
        return got, hub.source.listed, took

    got, listed, took = asyncio.run(main(False))
    assert listed == 1 and all(g == {"p": pod} for g in got)
    got, listed, took = asyncio.run(main(True))
    assert all(g is None for g in got) and listed == 1 and took < 5


def test_a_hub_that_failed_before_it_stopped_is_asked_afresh_and_a_bug_reaches_the_caller(
        seed_fleet):
    """A hub that stopped while its cluster failed must not answer "unreachable" from its
    old failure; one that died of a bug raises at once instead of waiting out the 30 s."""
    pod = {"metadata": {"name": "p", "uid": "u"}}

    class Buggy(CountingSource):
        async def list(self, cluster, namespace):
            raise KeyError("metadata")

    async def main() -> tuple[Any, float, str]:
        hub = watch.PodWatchHub(seed_fleet.clusters["rise"], "ns", CountingSource([pod]))
        hub._failed.set()  # left over from before it stopped
        hub.error = "connection refused"
        again = await hub.snapshot(30.0)
        await hub.close()
        broken = watch.PodWatchHub(seed_fleet.clusters["rise"], "ns", Buggy([pod]))
        start = asyncio.get_running_loop().time()
        with pytest.raises(RuntimeError, match="shared watch of rise/ns failed") as err:
            await broken.snapshot(30.0)
        return again, asyncio.get_running_loop().time() - start, repr(err.value.__cause__)

    again, took, cause = asyncio.run(main())
    assert again == {"p": pod}
    assert took < 5 and "KeyError" in cause
