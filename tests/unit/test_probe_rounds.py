"""Placements of one event loop that ask at once share one probe, never an older one
(capacity.probe_after): a storm of moves must not time its own probes out."""

from __future__ import annotations

import asyncio

import pytest

from airflow_provider_skyshare import capacity
from airflow_provider_skyshare.snapshot import Snapshot


class Probes:
    """A probe that the test lets finish: when each began, and each one's answer."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.release: list[asyncio.Event] = []
        self.clock = 0

    async def __call__(self, _fleet) -> Snapshot:
        self.started.append(self.clock)
        done = asyncio.Event()
        self.release.append(done)
        await done.wait()
        return Snapshot({}, taken_at=float(len(self.started)))

    async def finish(self, n: int) -> None:
        while len(self.release) <= n:  # the round has not begun yet
            await asyncio.sleep(0)
        self.release[n].set()


def test_who_asks_while_a_probe_runs_gets_the_next_one_shared(seed_fleet):
    async def main() -> tuple[list[float], list[int]]:
        probes = Probes()
        first = asyncio.create_task(capacity.probe_after(seed_fleet, probes))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        probes.clock = 1  # these ask after the first probe began: they must not take its answer
        later = [asyncio.create_task(capacity.probe_after(seed_fleet.for_org(org), probes))
                 for org in ("rise", "bair", "rise")]
        await probes.finish(0)
        await probes.finish(1)
        answers = await asyncio.gather(first, *later)
        return [a.taken_at for a in answers], probes.started

    taken, started = asyncio.run(main())
    assert taken == [1.0, 2.0, 2.0, 2.0]  # one probe for the three (every org's view alike)
    assert started == [0, 1]  # the second began after they asked


def test_a_lone_placement_probes_at_once_and_a_bug_reaches_every_waiter(seed_fleet):
    async def broken(_fleet) -> Snapshot:
        raise RuntimeError("bug in the probe")

    async def main() -> None:
        probes = Probes()
        alone = asyncio.create_task(capacity.probe_after(seed_fleet, probes))
        await probes.finish(0)
        assert (await alone).taken_at == 1.0
        both = [asyncio.create_task(capacity.probe_after(seed_fleet, broken)) for _ in range(2)]
        for task in both:
            with pytest.raises(RuntimeError, match="bug in the probe"):
                await task

    asyncio.run(main())


def test_a_first_placement_probes_while_it_searches_and_an_unused_probe_is_dropped(
        seed_fleet, monkeypatch):
    """KubeClusterApi.probing_early: the probe starts on entry (before the search for the
    task's pods ends), the placement's probe takes that one, and a placement that adopted a
    pod instead leaves no probe running."""
    from airflow_provider_skyshare.cluster_api import KubeClusterApi

    probes = Probes()
    monkeypatch.setattr(capacity, "probe_after", lambda fleet, run: probes(fleet))

    async def main() -> tuple[float, list[asyncio.Event]]:
        api = KubeClusterApi(seed_fleet, "key")
        async with api.probing_early():
            await asyncio.sleep(0)
            assert probes.started == [0]  # under way while the search runs
            await probes.finish(0)
            used = await api.probe(shared=False)
            nxt = asyncio.create_task(api.probe(shared=False))  # the next one is new
            await probes.finish(1)
            assert (await nxt).taken_at == 2.0
        async with api.probing_early():
            await asyncio.sleep(0)  # adopted: nobody asks
        return used.taken_at, probes.release

    taken, release = asyncio.run(main())
    assert taken == 1.0 and len(release) == 3 and not release[2].is_set()  # cancelled, unset
