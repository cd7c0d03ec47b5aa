"""Live logs: what streams when, how lines are marked, and where a reconnect resumes.

The pure parts on values; the shell (LiveLogs) on a fake container log that answers as the
API server does (``sinceTime`` in whole seconds, ``follow``, a connection that breaks).
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import replace
from datetime import datetime, timezone

import pytest

from airflow_provider_skyshare import kube
from airflow_provider_skyshare.finish import FinishPolicy
from airflow_provider_skyshare.follow import Follow, Job, Phase, Settings
from airflow_provider_skyshare.logstream import (
    NANOS,
    QUOTED_CHARS,
    LiveLogs,
    Resume,
    Target,
    container_logs,
    containers,
    current,
    fresh,
    instant,
    shown_from_dict,
    shown_to_dict,
    split,
    targets,
)
from airflow_provider_skyshare.placement import Request
from airflow_provider_skyshare.pods import TaskIdentity
from airflow_provider_skyshare.timeline import Attempt, Timeline

T0 = 1_800_000_000  # 2027-01-15T08:00:00Z
IDENTITY = TaskIdentity("dag", "train", "run-1")
TEMPLATE = {"spec": {"containers": [{"name": "base", "image": "busybox"},
                                    {"name": "sidecar", "image": "busybox"}]}}


def stamp(ns: int) -> str:
    """As the kubelet writes it with timestamps=true (RFC 3339, nine digits, UTC)."""
    seconds, frac = divmod(ns, NANOS)
    return datetime.fromtimestamp(seconds, timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


def attempt(number: int, cluster: str, started: bool = True, ended: bool = False) -> Attempt:
    return Attempt(number=number, cluster=cluster, tier="owner", pod=IDENTITY.pod_name(number),
                   namespace=f"skyshare-rise-{cluster}", placed_at=T0,
                   started_at=T0 + 1 if started else None, ended_at=T0 + 9 if ended else None)


def following(fleet, phase: Phase, *attempts: Attempt, **kw) -> Follow:
    job = Job(fleet, Request("T4", 2, "rise", "romil"), TEMPLATE, IDENTITY, Settings())
    return replace(Follow(job), phase=phase, timeline=Timeline(attempts), **kw)


# -- marking and which containers ----------------------------------------------------------
def test_a_line_is_marked_with_its_attempt_and_cluster_and_other_containers_by_name():
    assert Target("bair", "ns", "p", 2).mark("epoch 3") == "[attempt 2 on bair] epoch 3"
    assert Target("bair", "ns", "p", 2, "sidecar").mark("up") == \
        "[attempt 2 on bair] [sidecar] up"


@pytest.mark.parametrize(("value", "expected"), [
    (None, ("base",)), (True, True), (False, False), ("sidecar", ("sidecar",)),
    (["base", "sidecar"], ("base", "sidecar"))])
def test_container_logs_takes_kpos_forms(value, expected):
    assert container_logs(value) == expected


def test_containers_are_those_wanted_that_the_pod_has():
    pod = {"spec": {"containers": [{"name": "base"}, {"name": "sidecar"}]}}
    assert containers(pod, True) == ("base", "sidecar")
    assert containers(pod, ("sidecar", "missing")) == ("sidecar",)
    assert containers(pod, False) == ()
    assert containers(None, ("base",)) == ("base",)  # not seen yet: as named
    assert containers(None, True) == ("base",)


def test_get_logs_false_streams_nothing():
    assert FinishPolicy(get_logs=False).live_logs == ()
    assert FinishPolicy().live_logs == ("base",)
    policy = FinishPolicy(container_logs=True)
    assert FinishPolicy.from_dict(policy.to_dict()) == policy
    assert FinishPolicy.from_dict({"get_logs": True}).container_logs == ("base",)  # older


# -- what streams when ---------------------------------------------------------------------
def test_nothing_streams_before_the_attempt_runs(seed_fleet):
    assert targets(following(seed_fleet, Phase.WATCHING, attempt(1, "bair", started=False)),
                   ("base",)) == frozenset()


def test_the_running_attempt_streams_each_wanted_container(seed_fleet):
    state = following(seed_fleet, Phase.WATCHING, attempt(1, "bair"))
    assert targets(state, True) == {
        Target("bair", "skyshare-rise-bair", IDENTITY.pod_name(1), 1, "base"),
        Target("bair", "skyshare-rise-bair", IDENTITY.pod_name(1), 1, "sidecar")}


def test_a_preempted_attempt_streams_while_it_drains_and_stops_when_placing(seed_fleet):
    """Its container may still write a checkpoint: that is worth seeing."""
    first = attempt(1, "bair", ended=True)
    draining = targets(following(seed_fleet, Phase.DRAINING, first), ("base",))
    assert {t.attempt for t in draining} == {1}
    assert targets(following(seed_fleet, Phase.PLACING, first), ("base",)) == frozenset()


def test_after_a_move_the_next_attempt_streams_from_its_cluster(seed_fleet):
    state = following(seed_fleet, Phase.WATCHING, attempt(1, "bair", ended=True),
                      attempt(2, "rise"))
    (target,) = targets(state, ("base",))
    assert (target.attempt, target.cluster, target.pod) == (2, "rise", IDENTITY.pod_name(2))


def test_a_gone_pod_or_a_verdict_streams_nothing_but_the_final_log_is_the_newest(seed_fleet):
    gone = following(seed_fleet, Phase.WATCHING, attempt(1, "bair"), pod_gone=True)
    assert targets(gone, ("base",)) == frozenset()
    done = following(seed_fleet, Phase.DONE, attempt(1, "bair", ended=True),
                     attempt(2, "rise", ended=True))
    assert targets(done, ("base",)) == frozenset()
    assert [t.attempt for t in current(done, ("base",))] == [2]


# -- timestamps ----------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "ns"), [
    ("2027-01-15T08:00:00.000000001Z", T0 * NANOS + 1),
    ("2027-01-15T08:00:00Z", T0 * NANOS),
    ("2027-01-15T08:00:00.5Z", T0 * NANOS + NANOS // 2),
    ("2027-01-15T09:00:00.25+01:00", T0 * NANOS + NANOS // 4),  # a runtime's local offset
    ("2027-01-15 08:00:00Z", None), ("epoch", None), ("", None)])
def test_instant_reads_rfc3339_with_nanoseconds(text, ns):
    assert instant(text) == ns


def test_split_takes_the_timestamp_off_and_keeps_a_line_without_one_whole():
    assert split("2027-01-15T08:00:00.000000001Z loss 0.3 \n") == (T0 * NANOS + 1, "loss 0.3 ")
    assert split("2027-01-15T08:00:00Z ") == (T0 * NANOS, "")
    assert split("no timestamp here\n") == (None, "no timestamp here")


def test_since_time_is_the_last_shown_lines_second():
    assert Resume().since_time() is None
    assert Resume(T0 * NANOS + NANOS - 1, 1).since_time() == "2027-01-15T08:00:00Z"


# -- the reconnect's overlap ---------------------------------------------------------------
def lines(*ns_texts: tuple[int, str]) -> list[str]:
    return [f"{stamp(ns)} {text}" for ns, text in ns_texts]


def test_a_reconnect_drops_what_its_second_sends_again():
    base = T0 * NANOS
    shown, resume = fresh(lines((base + 1, "a"), (base + 5, "b")), Resume())
    assert shown == ["a", "b"]
    again = lines((base + 1, "a"), (base + 5, "b"), (base + 7, "c"))  # since the second
    assert fresh(again, resume.reconnected())[0] == ["c"]


def test_lines_with_the_same_timestamp_are_dropped_only_as_often_as_shown():
    base = T0 * NANOS
    shown, resume = fresh(lines((base, "x1"), (base, "x2")), Resume())
    assert shown == ["x1", "x2"] and resume.at_last == 2
    again = lines((base, "x1"), (base, "x2"), (base, "x3"), (base + 1, "y"))
    assert fresh(again, resume.reconnected())[0] == ["x3", "y"]


def test_the_first_connection_drops_nothing_even_out_of_order():
    base = T0 * NANOS
    shown, resume = fresh(lines((base + 9, "late"), (base + 1, "early")), Resume())
    assert shown == ["late", "early"]
    assert resume == Resume(base + 9, 1)  # the resume point never moves back


@pytest.mark.parametrize("seed", range(20))
def test_any_sequence_of_reconnects_shows_every_line_exactly_once(seed):
    """A log with many lines per second (some sharing a timestamp), read by connections
    broken at random points, each resumed at sinceTime as the API server answers it."""
    rng = random.Random(seed)
    ns, log = T0 * NANOS, []
    for i in range(200):
        ns += rng.choice([0, 0, 1, NANOS // 3, NANOS])
        log.append((ns, f"line {i}"))
    resume, shown = Resume(), []
    while True:
        since = instant(resume.since_time()) if resume.last is not None else 0
        sent = [(n, t) for n, t in log if n >= since]  # sinceTime: whole seconds, inclusive
        cut = rng.randint(1, len(sent))
        texts, resume = fresh(lines(*sent[:cut]), resume.reconnected())
        shown += texts
        if cut == len(sent):
            break
    assert shown == [t for _, t in log]


def test_how_far_a_log_was_shown_travels_in_the_end_event():
    shown = {"base": Resume(T0 * NANOS + 3, 2), "idle": Resume()}
    assert shown_from_dict(shown_to_dict(shown)) == {"base": Resume(T0 * NANOS + 3, 2)}
    assert shown_from_dict(None) == {}


# -- the shell, on a fake container log ----------------------------------------------------
class FakeLogs:
    """Container logs as the API server serves them: ``sinceTime`` in whole seconds
    (inclusive), ``follow`` until the connection breaks or is cancelled."""

    def __init__(self) -> None:
        self.logs: dict[str, list[tuple[int, str]]] = {}
        self.more = asyncio.Event()
        self.broken = False
        self.opened: list[tuple[str, str, str | None]] = []
        self.closed: list[str] = []

    def write(self, pod: str, ns: int, text: str) -> None:
        self.logs.setdefault(pod, []).append((ns, text))
        self.more.set()

    def break_connections(self) -> None:
        self.broken = True
        self.more.set()

    async def read(self, cluster, namespace, pod, container, since_time):
        self.opened.append((cluster.name, pod, since_time))
        since = instant(since_time) if since_time else 0
        sent = 0
        try:
            while True:
                if self.broken:
                    self.broken = False
                    raise kube.KubeError(cluster.name, 0, "Unreachable", "connection reset")
                todo = [(n, t) for n, t in self.logs.get(pod, []) if n >= since][sent:]
                for n, text in todo:
                    yield f"{stamp(n)} {text}\n"
                sent += len(todo)
                self.more.clear()
                await self.more.wait()
        finally:
            self.closed.append(pod)


async def until(predicate, what: str, timeout: float = 5.0) -> None:
    """Wait (with a deadline) until the streams did what the test expects."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def test_streams_follow_a_move_and_a_broken_connection_repeats_nothing(seed_fleet, caplog):
    caplog.set_level(logging.INFO, logger="live")
    fake, base = FakeLogs(), T0 * NANOS
    first, second = attempt(1, "bair"), attempt(2, "rise")
    marked = lambda: [r.getMessage() for r in caplog.records  # noqa: E731
                      if r.name == "live" and r.levelno == logging.INFO]

    async def scenario() -> LiveLogs:
        live = LiveLogs(seed_fleet, ("base",), logging.getLogger("live"), read=fake.read)
        fake.write(first.pod, base + 1, "step 1")
        live.sync(following(seed_fleet, Phase.WATCHING, first))
        await until(lambda: "[attempt 1 on bair] step 1" in marked(), "attempt 1's line")
        fake.write(first.pod, base + 2, "step 2")
        fake.break_connections()  # e.g. the apiserver restarted
        fake.write(first.pod, base + 3, "step 3")
        await until(lambda: "[attempt 1 on bair] step 3" in marked(), "the resumed stream")
        moving = following(seed_fleet, Phase.PLACING, replace(first, ended_at=T0 + 5))
        live.sync(moving)
        await until(lambda: first.pod in fake.closed, "attempt 1's stream closed")
        fake.write(second.pod, base + NANOS, "resumed from checkpoint")
        live.sync(following(seed_fleet, Phase.WATCHING, moving.timeline.last, second))
        await until(lambda: "[attempt 2 on rise] resumed from checkpoint" in marked(),
                    "attempt 2's line")
        await live.stop()
        return live

    live = asyncio.run(scenario())
    assert marked() == ["[attempt 1 on bair] step 1", "[attempt 1 on bair] step 2",
                        "[attempt 1 on bair] step 3",
                        "[attempt 2 on rise] resumed from checkpoint"]
    assert [o for o in fake.opened if o[1] == first.pod] == [
        ("bair", first.pod, None), ("bair", first.pod, "2027-01-15T08:00:00Z")]
    assert fake.closed.count(second.pod) == 1  # stopped
    assert sum("connection reset" in r.getMessage() for r in caplog.records) == 1
    done = following(seed_fleet, Phase.DONE, attempt(1, "bair", ended=True))
    assert live.shown(done) == {"base": Resume(base + 3, 1)}


def test_a_bug_in_a_stream_is_logged_and_never_reaches_the_follow_loop(seed_fleet, caplog):
    async def broken(*_args):
        raise ValueError("a bug")
        yield ""  # an async generator

    async def scenario() -> None:
        live = LiveLogs(seed_fleet, ("base",), logging.getLogger("live"), read=broken)
        live.sync(following(seed_fleet, Phase.WATCHING, attempt(1, "bair")))
        await until(lambda: "live log stream failed" in caplog.text, "the bug logged")
        await live.stop()

    asyncio.run(scenario())
    assert "ValueError: a bug" in caplog.text


def test_a_server_that_cannot_follow_is_polled_and_its_word_is_said_once(seed_fleet, caplog):
    """KWOK out of inotify instances writes what it has, then its error, and ends the
    stream: each reopening shows what is new, the error is no log line and is said once."""
    caplog.set_level(logging.INFO, logger="live")
    base, log = T0 * NANOS, [(T0 * NANOS, "first")]
    opened: list[str | None] = []

    async def cannot_follow(cluster, namespace, pod, container, since_time):
        opened.append(since_time)
        since = instant(since_time) if since_time else 0
        for ns, text in [(n, t) for n, t in log if n >= since]:
            yield f"{stamp(ns)} {text}\n"
        yield "failed to create fsnotify watcher: too many open files"

    async def scenario() -> None:
        live = LiveLogs(seed_fleet, ("base",), logging.getLogger("live"), read=cannot_follow)
        live.sync(following(seed_fleet, Phase.WATCHING, attempt(1, "bair")))
        await until(lambda: len(opened) >= 2, "a second opening")
        log.append((base + 1, "second"))
        await until(lambda: "[attempt 1 on bair] second" in caplog.text, "the new line")
        await live.stop()

    asyncio.run(scenario())
    marked = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert marked == ["[attempt 1 on bair] first", "[attempt 1 on bair] second"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "too many open files" in warnings[0], warnings


def test_a_long_servers_word_is_quoted_short_in_the_warning(seed_fleet, caplog):
    """A megabyte without a timestamp (e.g. a piece of an over-long server word) is no log
    line, and the warning quotes only its start."""
    word = "no such thing " * 1000
    opened: list[str | None] = []

    async def long_word(cluster, namespace, pod, container, since_time):
        opened.append(since_time)
        yield word

    async def scenario() -> None:
        live = LiveLogs(seed_fleet, ("base",), logging.getLogger("live"), read=long_word)
        live.sync(following(seed_fleet, Phase.WATCHING, attempt(1, "bair")))
        await until(lambda: opened and "no such thing" in caplog.text, "the warning")
        await live.stop()

    asyncio.run(scenario())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no such thing" in warnings[0], warnings
    assert len(warnings[0]) < QUOTED_CHARS + 200 < len(word)
