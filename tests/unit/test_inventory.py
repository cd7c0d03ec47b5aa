"""Capacity as placements read it. Live (inventory.py): a list+watch per collection keeps a
triggerer's view of each cluster's GPU nodes and GPU pods, and a placement probe reads it
instead of listing. And a worker's placement checks the tier policy on the chosen cluster
only."""

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


def cluster_io(monkeypatch, live, *, list_nodes, request) -> None:
    """The probe's I/O replaced: this inventory, these reads, clients always ready."""
    async def ready(cluster):
        return None

    monkeypatch.setattr(inventory, "of", lambda cluster: live)
    monkeypatch.setattr(kube, "list_nodes", list_nodes)
    monkeypatch.setattr(kube, "request", request)
    monkeypatch.setattr(clients, "ready", ready)


def enforced_fleet():
    """Each org its own credential: the clusters must enforce the tier policy."""
    return parse({
        "defaults": {"gpu_products": {"T4": "Tesla-T4"},
                     "access": {"context": "{org}@{cluster}"}},
        "orgs": [{"name": "rise"}, {"name": "bair"}],
        "clusters": [{"name": "rise", "owner": "rise", "context": "rise-operator"}],
    })


@pytest.mark.parametrize("enforced", [True, False])
def test_a_live_probe_lists_nothing_but_still_asks_the_cluster(seed_fleet, monkeypatch,
                                                               enforced):
    """No list; the tier policy's two reads where enforced, else one node: a cluster that
    stopped answering is unreachable at once, whatever its watches say."""
    rise = (enforced_fleet() if enforced else seed_fleet).clusters["rise"]
    assert rise.enforced is enforced
    source = Script({"/api/v1/pods": [listing([pod("a", 1, node="rise-gpu-0"),
                                               pod("web", 0, node="rise-gpu-0")], "10")],
                     "/api/v1/nodes": [listing([node("rise-gpu-0"), node("cpu-0", 0)], "10")]},
                    {"/api/v1/pods": [], "/api/v1/nodes": []})
    live = inventory.Inventory(rise.as_reader(), source)
    asked: list[str] = []

    async def policy(cluster, timeout):
        asked.append("policy")
        return None

    async def request(cluster, method, path, **kw):
        asked.append(f"{path}?{kw.get('query')}")
        return {}

    async def refuse(*args, **kwargs):
        raise AssertionError("a live probe must not list")

    cluster_io(monkeypatch, live, list_nodes=refuse, request=request)
    monkeypatch.setattr(capacity, "_policy_problem", policy)

    async def main():
        live.start()
        await settle()
        first = await capacity.probe_cluster(rise, 3.0)
        await capacity.probe_cluster(rise, 3.0)
        await live.close()
        return first

    first = asyncio.run(main())
    assert first.reachable and [(n.node, n.allocatable, n.used) for n in first.nodes] == [
        ("rise-gpu-0", 2, 1)]
    assert asked == (["policy"] * 2 if enforced else ["/api/v1/nodes?{'limit': '1'}"] * 2)
    assert sorted(source.lists) == ["/api/v1/nodes", "/api/v1/pods"]  # at the start only
    assert "managedFields" not in live.pods.items["u-a"]["metadata"]


def test_an_inventory_not_in_step_is_not_read(seed_fleet, monkeypatch):
    rise = seed_fleet.clusters["rise"]
    broken = inventory.Inventory(rise.as_reader(), Script({}, {}))  # never started
    listed: list[str] = []

    async def list_nodes(cluster, timeout):
        listed.append("nodes")
        return {"items": []}

    async def request(cluster, method, path, **kw):
        listed.append(path)
        return {"items": []}

    cluster_io(monkeypatch, broken, list_nodes=list_nodes, request=request)
    snap = asyncio.run(capacity.probe_cluster(rise, 3.0))
    assert snap.reachable and listed == ["nodes", "/api/v1/pods"]


def test_every_orgs_view_of_a_cluster_shares_one_inventory(monkeypatch):
    fleet = enforced_fleet()
    monkeypatch.setattr(inventory, "Inventory", Quiet)

    async def main():
        inventory.keep_live()
        views = [inventory.of(fleet.for_org(org).clusters["rise"].as_reader())
                 for org in ("rise", "bair", "rise")]
        for v in views:
            await v.close()
        return views

    views = asyncio.run(main())
    assert views[0] is views[1] is views[2]
    assert fleet.for_org("rise").clusters["rise"] != fleet.for_org("bair").clusters["rise"]


class Quiet(inventory.Inventory):
    """An inventory of an empty cluster whose watches stay open until `script.open` is set."""

    made: list[Quiet] = []

    def __init__(self, cluster, source=None, clock=None) -> None:
        self.script = Script(
            {"/api/v1/pods": [listing([], "1")], "/api/v1/nodes": [listing([], "1")]},
            {"/api/v1/pods": [], "/api/v1/nodes": []})
        super().__init__(cluster, self.script)
        Quiet.made.append(self)


def test_only_a_loop_that_keeps_live_gets_inventories_and_idle_ones_stop(seed_fleet,
                                                                         monkeypatch):
    rise = seed_fleet.clusters["rise"].as_reader()
    monkeypatch.setattr(inventory, "Inventory", Quiet)

    async def main() -> tuple[Any, ...]:
        worker = inventory.of(rise)
        inventory.keep_live()
        first, again = inventory.of(rise), inventory.of(rise)
        await settle()
        synced = first.synced
        first.used_at -= inventory.IDLE_SECONDS + 1  # nobody asked for a long time
        first.script.open.set()  # the watches end (their timeout): idle, so no new ones
        await settle()
        stopped = not first.running
        fresh = inventory.of(rise)
        await fresh.close()
        return worker, first is again, synced, stopped, fresh is not first

    worker, same, synced, stopped, fresh = asyncio.run(main())
    assert worker is None and same and synced and stopped and fresh and len(Quiet.made) == 2


def test_a_bug_in_a_watch_is_logged_and_the_cluster_is_listed_for_a_while(seed_fleet,
                                                                          monkeypatch, caplog):
    rise = seed_fleet.clusters["rise"].as_reader()

    class Buggy(Quiet):
        def __init__(self, cluster, source=None, clock=None) -> None:
            super().__init__(cluster)
            self.script.watches["/api/v1/pods"] = [[{"type": "ADDED",
                                                    "object": {"no": "metadata"}}]]

    monkeypatch.setattr(inventory, "Inventory", Buggy)

    async def main() -> list[Any]:
        inventory.keep_live()
        first = inventory.of(rise)
        await settle()
        await asyncio.sleep(0.01)
        state = [first.synced, first.running, first.failure]
        later = inventory.of(rise)
        await settle()
        return [*state, later, all(t.done() for t in first._tasks)]

    synced, running, failure, later, ended = asyncio.run(main())
    assert not synced and not running and failure.startswith("KeyError")
    assert later is None  # listed per probe for AFTER_BUG_SECONDS, not restarted per probe
    assert ended  # its nodes watch stopped too
    assert "capacity watch of rise failed" in caplog.text and "KeyError" in caplog.text


def test_a_credential_that_may_not_watch_is_told_once_after_some_patience(seed_fleet,
                                                                         monkeypatch, caplog):
    """A restarted apiserver answers 403 for a while (kube.FORBIDDEN_PATIENCE_SECONDS): only
    a longer refusal stops the inventory, with the fix, and then probes list."""
    rise = seed_fleet.clusters["rise"].as_reader()
    refused = kube.KubeError("rise", 403, "Forbidden", 'cannot watch resource "pods"')
    now = [0.0]

    class Watchless(Quiet):
        def __init__(self, cluster, source=None, clock=None) -> None:
            super().__init__(cluster)
            self.script.watches["/api/v1/pods"] = [[refused] for _ in range(50)]
            self.clock = self.pods.clock = self.nodes.clock = self._tick

        def _tick(self) -> float:
            now[0] += 1.0  # every look at the clock: a second (the backoff's sleeps)
            return now[0]

    monkeypatch.setattr(inventory, "Inventory", Watchless)

    async def main() -> list[Any]:
        inventory.keep_live()
        first = inventory.of(rise)
        for _ in range(400):
            if first.refused:
                break
            await asyncio.sleep(0.01)
        later = [inventory.of(rise) for _ in range(3)]
        await settle()
        return [first.refused, len(first.script.watched), later,
                all(t.done() for t in first._tasks)]

    why, watches, later, ended = asyncio.run(main())
    assert "cannot watch" in why and watches > 2  # asked again before giving up
    assert later == [None, None, None] and len(Quiet.made) == 1 and ended
    assert caplog.text.count("may not list and watch /api/v1/pods") == 1
    assert "Fix: grant it the reader role" in caplog.text


@pytest.fixture(autouse=True)
def _no_inventories_left():
    Quiet.made.clear()
    yield
    inventory._inventories.clear()
    inventory._resting.clear()




def test_a_placement_checks_the_tier_policy_on_the_chosen_cluster_only(monkeypatch):
    """A worker's placement probe leaves the policy out (two reads less per cluster); the
    create on the chosen cluster checks it first, trusting a read of the last minute that
    found it in force (and no later read that did not), and a cluster that does not
    enforce it is refused like a 4xx, its pod never created."""
    from airflow_provider_skyshare import tenancy
    from airflow_provider_skyshare.cluster_api import KubeClusterApi
    from airflow_provider_skyshare.follow import CreateAnswer, Created, CreateFailed
    from airflow_provider_skyshare.names import POLICY_PATHS

    fleet = enforced_fleet().for_org("rise")
    objects = dict(zip(POLICY_PATHS, reversed(tenancy.tier_policy(fleet.clusters["rise"])),
                       strict=True))  # (binding, policy)
    reads: list[str] = []
    created: list[str] = []
    holds = [False]

    async def request(cluster, method, path, **kw):
        if path in objects:
            reads.append(path)
            if holds[0]:
                return objects[path]
            raise kube.KubeError(cluster.name, 404, "NotFound", "not found")
        return {"items": []}

    async def create_pod(cluster, pod):
        created.append(cluster.name)
        return pod

    async def no_nodes(cluster, timeout):
        return {"items": []}

    cluster_io(monkeypatch, None, list_nodes=no_nodes, request=request)
    monkeypatch.setattr(capacity, "_enforced_at", {})
    monkeypatch.setattr(kube, "create_pod", create_pod)
    api = KubeClusterApi(fleet, "key")
    pod = {"metadata": {"name": "p", "namespace": "skyshare-rise"}}

    async def main():
        await capacity.probe_placing(fleet)
        probed = list(reads)
        refused = await api.create("rise", pod)
        holds[0] = True
        made = await api.create("rise", pod)
        again = await api.create("rise", pod)  # trusts the read just before
        holds[0] = False
        shown = await capacity.probe(fleet)  # a probe (a rebalance check) finds it gone
        after = await api.create("rise", pod)
        return probed, refused, made, again, shown, after

    probed, refused, made, again, shown, after = asyncio.run(main())
    assert probed == []
    assert isinstance(refused, CreateFailed) and refused.answer is CreateAnswer.REFUSED
    assert "apply `skyshare manifests --cluster rise`" in refused.message
    assert made == again == Created("rise") and created == ["rise", "rise"]
    assert not shown.get("rise").reachable
    assert isinstance(after, CreateFailed), "a read that found it gone must not be trusted"
    assert len(reads) == 2 * 4  # refused, made, the probe, after: not `again`


def test_a_pod_created_here_counts_until_its_watch_event_comes(seed_fleet, monkeypatch):
    """The next placement must not count the GPUs of a pod this loop has just made as free
    (a fresh list would have had it), nor keep counting it once the watch said otherwise."""
    rise = seed_fleet.clusters["rise"].as_reader()

    class Gated(Script):
        """The pods' watch brings the new pod's deletion once `go` is set."""

        def __init__(self) -> None:
            super().__init__({"/api/v1/pods": [listing([], "1")],
                              "/api/v1/nodes": [listing([], "1")]}, {})
            self.go = asyncio.Event()

        async def watch(self, cluster, path, query, resource_version):
            self.watched.append((path, resource_version))
            if path == "/api/v1/pods":
                await self.go.wait()
                yield {"type": "DELETED", "object": pod("new", 1, rv="5")}
            await asyncio.Event().wait()  # then a quiet stream

    source = Gated()
    made = inventory.Inventory(rise, source)
    monkeypatch.setattr(inventory, "Inventory", lambda cluster: made)

    async def main() -> list[list[str]]:
        inventory.keep_live()
        live = inventory.of(rise)
        await settle()

        def names() -> list[str]:
            return sorted(p["metadata"]["name"] for p in live.pods.current())

        inventory.note_created(rise, pod("new", 1))
        inventory.note_created(rise, pod("cpu", 0))  # holds no GPU: not counted
        seen = [names()]
        source.go.set()
        await settle()
        seen.append(names())
        inventory.note_created(rise, pod("late", 1))
        live.pods.clock = lambda: 1e12  # long after, and no watch event came
        seen.append(names())
        await live.close()
        return seen

    assert asyncio.run(main()) == [["new"], [], []]
