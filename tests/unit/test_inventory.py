"""Live capacity (inventory.py): a list+watch per collection keeps a triggerer's view of each
cluster's nodes and GPU pods, and a placement probe reads it without a request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from airflow_provider_skyshare import capacity, clients, inventory, kube
from airflow_provider_skyshare.fleet import parse


def pod(name: str, gpus: int, node: str = "n1", phase: str = "Running", rv: str = "1",
        uid: str | None = None) -> dict[str, Any]:
    res = {"limits": {"nvidia.com/gpu": str(gpus)}} if gpus else {}
    return {"metadata": {"name": name, "namespace": "ns", "uid": uid or f"u-{name}",
                         "resourceVersion": rv},
            "spec": {"nodeName": node, "containers": [{"name": "c", "resources": res}]},
            "status": {"phase": phase}}


def node(name: str, gpus: int = 2) -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": f"u-{name}", "resourceVersion": "1",
                         "labels": {"nvidia.com/gpu.product": "Tesla-T4"}},
            "spec": {}, "status": {"allocatable": {"nvidia.com/gpu": str(gpus)},
                                   "conditions": [{"type": "Ready", "status": "True"}]}}


class Script:
    """A cluster as a source: each list answers the next listing; each watch plays the next
    list of events, then waits until the test ends it (a watch the server keeps open)."""

    def __init__(self, listings: dict[str, list[dict[str, Any]]],
                 watches: dict[str, list[list[dict[str, Any]]]]) -> None:
        self.listings, self.watches = listings, watches
        self.lists: list[str] = []
        self.watched: list[tuple[str, str]] = []
        self.open = asyncio.Event()

    async def list(self, cluster, path: str, query: dict[str, str]) -> dict[str, Any]:
        self.lists.append(path)
        answer = self.listings[path].pop(0) if len(self.listings[path]) > 1 else \
            self.listings[path][0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def watch(self, cluster, path: str, query: dict[str, str],
                    resource_version: str) -> AsyncIterator[dict[str, Any]]:
        self.watched.append((path, resource_version))
        for event in self.watches[path].pop(0) if self.watches[path] else []:
            if isinstance(event, Exception):
                raise event
            yield event
        await self.open.wait()


def listing(items: list[dict[str, Any]], rv: str) -> dict[str, Any]:
    return {"metadata": {"resourceVersion": rv}, "items": items}


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_the_mirror_keeps_gpu_pods_in_step_with_the_watch(seed_fleet):
    async def main() -> tuple[list[str], list[tuple[str, str]], bool]:
        source = Script({"/api/v1/pods": [listing([pod("a", 1), pod("web", 0)], "10")]},
                        {"/api/v1/pods": [[
                            {"type": "ADDED", "object": pod("b", 2, rv="11")},
                            {"type": "ADDED", "object": pod("cpu", 0, rv="12")},
                            {"type": "MODIFIED", "object": pod("a", 1, phase="Succeeded",
                                                                 rv="13")},
                            {"type": "BOOKMARK", "object": {"metadata": {
                                "resourceVersion": "14"}}},
                            {"type": "DELETED", "object": pod("b", 2, rv="15")},
                            {"type": "ADDED", "object": pod("c", 1, rv="16")},
                        ]]})
        inv = inventory.Inventory(seed_fleet.clusters["rise"], source)
        mirror = inv.pods
        task = asyncio.create_task(mirror.run(lambda: False))
        await settle()
        names = sorted(p["metadata"]["name"] for p in mirror.items.values())
        synced = mirror.synced
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return names, source.watched, synced

    names, watched, synced = asyncio.run(main())
    # "a" ended (a terminal pod holds no GPU), "b" was deleted, CPU pods are never kept
    assert names == ["c"] and synced
    assert watched == [("/api/v1/pods", "10")]


def test_a_watch_too_old_relists_and_a_broken_one_is_not_used_until_it_has(seed_fleet):
    gone = {"type": "ERROR", "object": {"code": 410, "reason": "Expired", "message": "old"}}
    broken = kube.KubeError("rise", 0, "Unreachable", "connection reset")

    async def main() -> list[Any]:
        source = Script({"/api/v1/pods": [listing([pod("a", 1)], "10"),
                                          listing([pod("b", 1)], "20"),
                                          listing([pod("c", 1)], "30")]},
                        {"/api/v1/pods": [[gone], [broken]]})
        mirror = inventory.Inventory(seed_fleet.clusters["rise"], source).pods
        seen = []
        task = asyncio.create_task(mirror.run(lambda: False))
        for _ in range(200):
            seen.append((mirror.synced, tuple(sorted(p["metadata"]["name"]
                                                     for p in mirror.items.values()))))
            if len(source.lists) == 3 and mirror.synced:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return [seen[-1], source.watched, any(not s for s, _ in seen)]

    last, watched, was_unsynced = asyncio.run(main())
    assert last == (True, ("c",))
    assert watched == [("/api/v1/pods", "10"), ("/api/v1/pods", "20"), ("/api/v1/pods", "30")]
    assert was_unsynced  # between the break and the relist, the probe would have listed


def test_a_live_probe_makes_no_request_and_reads_the_policy_once_per_ttl(monkeypatch):
    rise = parse({  # each org its own credential: the cluster must enforce the tier policy
        "defaults": {"gpu_products": {"T4": "Tesla-T4"},
                     "access": {"context": "{org}@{cluster}"}},
        "orgs": [{"name": "rise"}],
        "clusters": [{"name": "rise", "owner": "rise", "context": "rise-operator"}],
    }).clusters["rise"]
    assert rise.enforced
    clock = [0.0]
    source = Script({"/api/v1/pods": [listing([pod("a", 1, node="rise-gpu-0")], "10")],
                     "/api/v1/nodes": [listing([node("rise-gpu-0")], "10")]},
                    {"/api/v1/pods": [], "/api/v1/nodes": []})
    live = inventory.Inventory(rise.as_reader(), source, clock=lambda: clock[0])
    policy_reads = []

    async def policy(cluster, timeout):
        policy_reads.append(clock[0])
        return None

    async def refuse(*args, **kwargs):
        raise AssertionError("a live probe must not list")

    async def ready(cluster):
        return None

    monkeypatch.setattr(inventory, "of", lambda cluster: live)
    monkeypatch.setattr(capacity, "_policy_problem", policy)
    monkeypatch.setattr(kube, "list_nodes", refuse)
    monkeypatch.setattr(kube, "request", refuse)
    monkeypatch.setattr(clients, "ready", ready)

    async def main() -> list[Any]:
        live.start()
        await settle()
        first = await capacity.probe_cluster(rise, 3.0)
        clock[0] = inventory.POLICY_TTL / 2
        await capacity.probe_cluster(rise, 3.0)
        clock[0] = inventory.POLICY_TTL + 1
        await capacity.probe_cluster(rise, 3.0)
        await live.close()
        return [first]

    [first] = asyncio.run(main())
    assert first.reachable and [(n.node, n.allocatable, n.used) for n in first.nodes] == [
        ("rise-gpu-0", 2, 1)]
    assert policy_reads == [0.0, inventory.POLICY_TTL + 1]
    assert sorted(source.lists) == ["/api/v1/nodes", "/api/v1/pods"]  # at the start only


def test_only_a_loop_that_keeps_live_gets_inventories_and_idle_ones_stop(seed_fleet,
                                                                         monkeypatch):
    rise = seed_fleet.clusters["rise"].as_reader()
    made: list[tuple[inventory.Inventory, Script]] = []

    class Quiet(inventory.Inventory):
        def __init__(self, cluster, source=None, clock=None) -> None:
            script = Script(
                {"/api/v1/pods": [listing([], "1")], "/api/v1/nodes": [listing([], "1")]},
                {"/api/v1/pods": [], "/api/v1/nodes": []})
            super().__init__(cluster, script)
            made.append((self, script))

    monkeypatch.setattr(inventory, "Inventory", Quiet)

    async def main() -> tuple[Any, ...]:
        worker = inventory.of(rise)
        inventory.keep_live()
        first, again = inventory.of(rise), inventory.of(rise)
        await settle()
        synced = first.synced
        first.used_at -= inventory.IDLE_SECONDS + 1  # nobody asked for a long time
        made[0][1].open.set()  # the watches end (their timeout): idle, so no new ones
        await settle()
        stopped = not first.running
        fresh = inventory.of(rise)
        await fresh.close()
        return worker, first is again, synced, stopped, fresh is not first

    worker, same, synced, stopped, fresh = asyncio.run(main())
    assert worker is None and same and synced and stopped and fresh and len(made) == 2


@pytest.fixture(autouse=True)
def _no_inventories_left():
    yield
    inventory._inventories.clear()


def test_a_bug_in_a_watch_is_logged_and_its_inventory_no_longer_used(seed_fleet, caplog):
    async def main() -> tuple[bool, bool]:
        source = Script({"/api/v1/pods": [listing([pod("a", 1)], "10")],
                         "/api/v1/nodes": [listing([node("n1")], "10")]},
                        {"/api/v1/pods": [[{"type": "ADDED", "object": {"no": "metadata"}}]],
                         "/api/v1/nodes": []})
        inv = inventory.Inventory(seed_fleet.clusters["rise"], source)
        inv.start()
        await settle()
        await asyncio.sleep(0.01)
        return inv.synced, inv.running

    synced, running = asyncio.run(main())
    assert not synced and not running  # the pods' mirror died: of() starts a new inventory
    assert "capacity watch of rise failed" in caplog.text and "KeyError" in caplog.text


def test_a_credential_that_may_not_watch_is_said_once_and_the_probe_lists(seed_fleet,
                                                                          monkeypatch, caplog):
    rise = seed_fleet.clusters["rise"].as_reader()
    refused = kube.KubeError("rise", 403, "Forbidden", 'cannot watch resource "pods"')
    scripts: list[Script] = []

    class Watchless(inventory.Inventory):
        def __init__(self, cluster, source=None, clock=None) -> None:
            scripts.append(Script(
                {"/api/v1/pods": [listing([], "1")], "/api/v1/nodes": [listing([], "1")]},
                {"/api/v1/pods": [[refused]], "/api/v1/nodes": []}))
            super().__init__(cluster, scripts[-1])

    monkeypatch.setattr(inventory, "Inventory", Watchless)

    async def main() -> list[Any]:
        inventory.keep_live()
        first = inventory.of(rise)
        await settle()
        later = [inventory.of(rise) for _ in range(3)]
        first.stop()
        return [first.refused, later]

    was_refused, later = asyncio.run(main())
    assert was_refused and later == [None, None, None] and len(scripts) == 1
    assert caplog.text.count("may not list and watch /api/v1/pods") == 1
    assert "Fix: grant it the reader role" in caplog.text
