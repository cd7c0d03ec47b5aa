"""A create whose answer is lost (issue 14, acceptance test 1), on the real sandbox.

A loopback proxy (``tests.helpers.faultproxy``) sits in front of rise's API server for the
provider only: it forwards the pod create, lets the API server store the pod, and resets the
client's connection instead of passing the answer on. The provider must read the pod back
and adopt it, not create a second one elsewhere. Every "how many pods at once" is counted
from the API servers' own watch events (``tests.helpers.podwatch``), read without the proxy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from airflow_provider_skyshare import clients
from airflow_provider_skyshare.follow import HOUSEKEEPING_SECONDS
from airflow_provider_skyshare.names import A_ORPHANS
from airflow_provider_skyshare.sandbox import paths
from tests.helpers.faultproxy import POD_CREATE, FaultProxy
from tests.helpers.fixtures import wait_for
from tests.helpers.podwatch import PodRecorder
from tests.integration.test_reliability import Driven, closing, make, pods_of

pytestmark = pytest.mark.integration

CLUSTERS = ("rise", "bair")


@pytest.fixture
def rise_proxy(sandbox, kube_env, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """The provider reaches rise through the proxy: a copy of the sandbox kubeconfig whose
    rise cluster entry (every context of rise uses it) names the proxy. The test's own
    observers keep the original kubeconfig (the ``admin`` fixture)."""
    doc = yaml.safe_load(Path(sandbox.kubeconfig).read_text())
    entry = next(c["cluster"] for c in doc["clusters"] if c["name"] == "rise")
    with FaultProxy(entry["server"], paths.state_dir() / "pki") as proxy:
        entry["server"] = proxy.url
        copy = tmp_path / "kubeconfig"
        copy.write_text(yaml.safe_dump(doc))
        copy.chmod(0o600)
        monkeypatch.setenv("KUBECONFIG", str(copy))
        clients.reset()  # clients are cached per kubeconfig path too; start clean anyway
        try:
            yield proxy
        finally:
            clients.reset()


def _said(caplog: pytest.LogCaptureFixture, log: logging.Logger) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == log.name)


def _all_deleted(rec: PodRecorder) -> bool:
    """Every pod the watch saw has had its DELETED event: nothing of the task is left."""
    uids = {e.uid for e in rec.events}
    return bool(uids) and uids == {e.uid for e in rec.events if e.kind == "DELETED"}


def _end(rec: PodRecorder, uid: str) -> float | None:
    """When the watch saw this pod stop being live (None: live, or not seen yet)."""
    found = rec.intervals().get(uid)
    return found[2] if found else None


def _tear_down(sup: Driven, admin, rec: PodRecorder) -> None:
    """Delete the task's pods and wait for the watch to see each one go."""
    asyncio.run(closing(sup.delete_all(0)))
    wait_for(lambda: not any(pods_of(admin, c, sup) for c in CLUSTERS), 60,
             "the task's pods gone from every cluster")
    wait_for(lambda: _all_deleted(rec), 30, "a DELETED watch event for every pod of the task")


def test_a_lost_create_answer_is_read_back_and_the_pod_adopted(
        sandbox, admin, rise_proxy, no_leaks, caplog):
    caplog.set_level(logging.INFO)
    log = logging.getLogger("skyshare.test.lost-answer")
    sup = make("lost-answer", duration="3s", log=log)
    rise_proxy.drop_next_create_response(POD_CREATE)
    with PodRecorder(admin, CLUSTERS, sup.identity.selector(this_try=False)) as rec:
        started = time.monotonic()
        event = asyncio.run(closing(sup.follow()))
        print(f"lost create answer -> verdict in {time.monotonic() - started:.1f}s")
        _tear_down(sup, admin, rec)

    # The fault happened: the API server stored the pod (201) and the client never heard it.
    dropped = rise_proxy.dropped()
    assert [(d.method, d.status) for d in dropped] == [("POST", 201)], rise_proxy.exchanges
    stored = json.loads(dropped[0].body)["metadata"]
    assert len(rise_proxy.forwarded("POST", POD_CREATE)) == 1, "the pod was created again"
    said = _said(caplog, log)
    assert "had no clear answer but made the pod: following it" in said, said

    assert event["status"] == "success", event["message"]
    assert [(a["cluster"], a["tier"], a["pod"], a["outcome"]) for a in event["timeline"]] == [
        ("rise", "owner", stored["name"], "Succeeded")]
    assert event["orphans"] == []

    # The API servers' own account: one pod, the one whose answer was lost, never on bair.
    assert rec.created() == [f"rise/{stored['name']}"], rec.created()
    assert list(rec.intervals()) == [stored["uid"]]
    most, which = rec.most_live_at_once()
    assert most == 1, which


def test_a_lost_create_answer_and_read_back_leave_an_orphan_deleted_when_rise_answers(
        sandbox, admin, rise_proxy, no_leaks, caplog):
    """The design's promise when even the read-back gets no answer (docs/design.md, "A
    create without a clear answer"): placement goes on to the next cluster, so for a while
    two pods of the task may be live; the unknown one is an orphan, named on the new pod
    (``skyshare.dev/orphans``) and deleted once its cluster answers (next housekeeping)."""
    caplog.set_level(logging.INFO)
    log = logging.getLogger("skyshare.test.lost-twice")
    sup = make("lost-twice", duration="45s", log=log)
    rise_proxy.drop_next_create_response(POD_CREATE, then_blackout=True)
    seen: dict[str, float] = {}

    async def scenario(rec: PodRecorder) -> dict:
        follow = asyncio.create_task(sup.follow())
        bair = await asyncio.to_thread(wait_for, lambda: pods_of(admin, "bair", sup), 60,
                                       "the attempt on bair")
        seen["orphans"] = json.loads(bair[0].metadata.annotations.get(A_ORPHANS) or "[]")
        stored = json.loads(rise_proxy.dropped()[0].body)["metadata"]
        # Restore rise only once a delete of the orphan (its get first) found rise silent, so
        # the deletion that follows is the one promised for "once the cluster answers".
        orphan_get = rf"/pods/{stored['name']}$"
        before = len(rise_proxy.refused("GET", orphan_get))  # the read-back's, and maybe one
        await asyncio.to_thread(
            wait_for, lambda: len(rise_proxy.refused("GET", orphan_get)) > before,
            HOUSEKEEPING_SECONDS + 10, "a delete of the orphan unanswered while rise is silent")
        seen["restored"] = time.time()
        rise_proxy.restore()  # rise answers again: the orphan must go
        await asyncio.to_thread(wait_for, lambda: _end(rec, stored["uid"]),
                                HOUSEKEEPING_SECONDS + 10, "the orphan on rise deleted")
        return await follow

    with PodRecorder(admin, CLUSTERS, sup.identity.selector(this_try=False)) as rec:
        event = asyncio.run(closing(scenario(rec)))
        _tear_down(sup, admin, rec)

    dropped = rise_proxy.dropped()
    assert [(d.method, d.status) for d in dropped] == [("POST", 201)], rise_proxy.exchanges
    stored = json.loads(dropped[0].body)["metadata"]
    said = _said(caplog, log)
    assert "cluster rise unreachable" in said and "reading it back" in said, said
    assert f"deleted orphaned pod {stored['name']} on rise" in said, said

    assert event["status"] == "success", event["message"]
    assert [(a["cluster"], a["tier"], a["outcome"]) for a in event["timeline"]] == [
        ("bair", "borrower", "Succeeded")]
    assert event["orphans"] == []
    # The orphan travelled on the new pod, so a restarted trigger would delete it too.
    assert seen["orphans"] == [{"cluster": "rise", "namespace": stored["namespace"],
                                "pod": stored["name"]}], seen["orphans"]

    # The API servers' own account: the rise pod was deleted (never ran to its own end), within
    # one housekeeping period of rise answering again; at most these two were ever live.
    intervals = rec.intervals()
    assert sorted(n for n, _, _ in intervals.values()) == sorted(
        [f"rise/{stored['name']}", f"bair/{event['timeline'][0]['pod']}"]), intervals
    ended = intervals[stored["uid"]][2]
    assert ended is not None
    rise_phases = {e.phase for e in rec.events if e.uid == stored["uid"]}
    assert "Succeeded" not in rise_phases, rise_phases
    late = ended - seen["restored"]
    print(f"orphan on rise deleted {late:.1f}s after rise answered again")
    assert late <= HOUSEKEEPING_SECONDS + 5, late
    bair_from = next(start for n, start, _ in intervals.values() if n.startswith("bair/"))
    print(f"both live for {max(0.0, ended - bair_from):.1f}s; rise silent for "
          f"{seen['restored'] - dropped[0].at:.1f}s")
    most, which = rec.most_live_at_once()
    assert most <= 2, which
