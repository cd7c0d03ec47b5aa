"""The tombstone writes' error paths (taskpods): what a cluster without an answer, a race and
a bug do to them. The HTTP is replaced by a scripted fake: the real writes are tested on the
sandbox (tests/integration/test_fencing.py); here, the answers no sandbox gives on demand."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from airflow_provider_skyshare import clients, kube, taskpods
from airflow_provider_skyshare.names import L_VERDICT
from airflow_provider_skyshare.pods import TaskIdentity
from airflow_provider_skyshare.timeline import Attempt, Timeline

IDENTITY = TaskIdentity("d", "t", "r")
POD = IDENTITY.pod_name(2)
LAST = Attempt(2, "rise", "owner", POD, "skyshare-rise", 0.0)
TOMB = taskpods.Tomb("success", "A", Timeline((LAST,)), 100.0, retry_for=5.0)
LOG = logging.getLogger("test")


class Script:
    """Answers kube.request from a list of (method, answer) in order; an answer that is an
    exception is raised. Every call is recorded."""

    def __init__(self, answers: list[tuple[str, Any]]) -> None:
        self.answers, self.calls = list(answers), []

    async def __call__(self, cluster, method: str, path: str, **kw: Any) -> Any:
        self.calls.append((cluster.name, method, path, kw.get("body")))
        expected, answer = self.answers.pop(0)
        assert method == expected, (method, path, expected)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def no_answer() -> kube.KubeError:
    return kube.KubeError("rise", 0, "unreachable", "connection refused")


def http(status: int) -> kube.KubeError:
    return kube.KubeError("rise", status, "", f"HTTP {status}")


@pytest.fixture
def fleet(seed_fleet):
    return seed_fleet


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    async def instant(_: float) -> None:
        return None
    monkeypatch.setattr(taskpods.asyncio, "sleep", instant)


def run(coro):
    return asyncio.run(coro)


def test_a_tombstone_write_without_an_answer_is_asked_again(fleet, monkeypatch):
    script = Script([("POST", no_answer()), ("POST", no_answer()), ("POST", {})])
    monkeypatch.setattr(kube, "request", script)
    body = taskpods._new_tomb(IDENTITY, TOMB, POD, 2)
    assert run(taskpods._entomb(fleet.clusters["rise"], body, TOMB, 1e12, LOG)) == POD
    written = script.calls[-1][3]
    assert written["metadata"]["labels"][L_VERDICT] == "success"
    assert written["metadata"]["namespace"] == fleet.clusters["rise"].namespace


def test_a_lost_race_reads_the_lease_again_and_overwrites_it_with_its_version(fleet,
                                                                              monkeypatch):
    claim = {"metadata": {"name": POD, "resourceVersion": "7", "labels": {}}, "spec": {}}
    script = Script([("POST", http(409)), ("GET", claim), ("PUT", {})])
    monkeypatch.setattr(kube, "request", script)
    body = taskpods._new_tomb(IDENTITY, TOMB, POD, 2)
    assert run(taskpods._entomb(fleet.clusters["rise"], body, TOMB, 1e12, LOG)) == POD
    assert script.calls[-1][3]["metadata"]["resourceVersion"] == "7"


def test_a_tombstone_already_there_is_left_as_it_is(fleet, monkeypatch):
    tomb = {"metadata": {"name": POD, "resourceVersion": "7", "labels": {L_VERDICT: "failed"}}}
    script = Script([("POST", http(409)), ("GET", tomb)])
    monkeypatch.setattr(kube, "request", script)
    body = taskpods._new_tomb(IDENTITY, TOMB, POD, 2)
    assert run(taskpods._entomb(fleet.clusters["rise"], body, TOMB, 1e12, LOG)) == ""
    assert [c[1] for c in script.calls] == ["POST", "GET"]  # nothing overwritten


def test_a_cluster_without_credentials_is_logged_not_raised(fleet, monkeypatch, caplog):
    script = Script([("POST", clients.ClusterConfigError("rise: no context rise@rise"))])
    monkeypatch.setattr(kube, "request", script)
    body = taskpods._new_tomb(IDENTITY, TOMB, POD, 2)
    assert run(taskpods._entomb(fleet.clusters["rise"], body, TOMB, 1e12, LOG)) == ""
    assert "could not mark claim" in caplog.text


def test_the_pods_are_deleted_even_when_a_tombstone_write_hits_a_bug(fleet, monkeypatch):
    async def broken(*_: Any, **__: Any) -> Any:
        raise KeyError("a bug")
    monkeypatch.setattr(kube, "request", broken)
    deleted: list[tuple[str, list[str]]] = []

    async def doomed(name: str) -> dict[str, int]:
        return {POD: 2} if name == "rise" else {}

    async def delete(name: str, names: list[str]) -> list[str]:
        deleted.append((name, names))
        return names

    with pytest.raises(KeyError):  # the bug is not hidden ...
        run(taskpods.entomb_then_delete(fleet, IDENTITY, LOG, TOMB, doomed, delete))
    assert ("rise", [POD]) in deleted  # ... and the pod went anyway, on every cluster
    assert {name for name, _ in deleted} == set(fleet.clusters)


def test_each_pod_about_to_go_gets_a_tombstone_here_and_on_the_fallback_cluster(
        fleet, monkeypatch):
    script = Script([("GET", {"items": []})] + [("POST", {})] * 2
                    + [("GET", {"items": []})])
    monkeypatch.setattr(kube, "request", script)

    async def doomed(name: str) -> dict[str, int]:
        return {POD: 2} if name == "rise" else {}

    async def delete(name: str, names: list[str]) -> list[str]:
        return names

    run(taskpods.entomb_then_delete(fleet, IDENTITY, LOG, TOMB, doomed, delete))
    posts = sorted((c[0], c[3]["metadata"]["name"]) for c in script.calls if c[1] == "POST")
    assert posts == [("bair", POD), ("rise", POD)]


def test_a_403_from_an_apiserver_that_just_started_is_asked_again(fleet, monkeypatch):
    """Seen in the soak: a restarted apiserver answers 403 until its RBAC cache syncs."""
    script = Script([("POST", http(403)), ("POST", http(403)), ("POST", {})])
    monkeypatch.setattr(kube, "request", script)
    body = taskpods._new_tomb(IDENTITY, TOMB, POD, 2)
    assert run(taskpods._entomb(fleet.clusters["rise"], body, TOMB, 1e12, LOG)) == POD


def test_a_claim_forbidden_for_good_is_a_missing_permission(fleet, monkeypatch):
    from airflow_provider_skyshare.cluster_api import MissingPermission, _Claims
    from airflow_provider_skyshare.follow import Claim

    calls: list[str] = []

    async def forbidden(cluster, method: str, path: str, **_: Any) -> Any:
        calls.append(method)
        raise http(403)

    monkeypatch.setattr(kube, "request", forbidden)
    monkeypatch.setattr(kube.asyncio, "sleep", taskpods.asyncio.sleep)  # instant here too
    monkeypatch.setattr(kube, "FORBIDDEN_PATIENCE_SECONDS", 0.05)
    claim = Claim(("rise",), taskpods._new_tomb(IDENTITY, TOMB, POD, 2), None)
    with pytest.raises(MissingPermission, match="skyshare manifests"):
        run(_Claims(fleet).write(claim))
    assert len(calls) >= 1
