"""Capacity probes against the sandbox's apiservers, counted at the provider's one request door."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from airflow_provider_skyshare import capacity, clients, kube
from airflow_provider_skyshare.fleet import load

pytestmark = pytest.mark.integration
FLEET = Path(__file__).resolve().parents[2] / "dags" / "fleet.yaml"


@pytest.fixture
def requests(monkeypatch, kube_env) -> list[tuple[str, str]]:
    """Every API call the provider makes (a spy: the calls still go to the real apiservers)."""
    made: list[tuple[str, str]] = []
    real = kube.request

    async def spy(cluster, method, path, **kw):
        made.append((cluster.name, path))
        return await real(cluster, method, path, **kw)

    monkeypatch.setattr(kube, "request", spy)
    clients.reset()
    return made


def test_queued_tasks_share_one_probe(requests) -> None:
    """Fifty queued tasks of one triggerer checking whether to move cost one probe."""
    fleet = load(FLEET)

    async def main():
        many = await asyncio.gather(*(capacity.probe_shared(fleet, 60) for _ in range(50)))
        later = await capacity.probe_shared(fleet, 60)
        fresh = await capacity.probe_shared(fleet, 0)
        await clients.close_async_clients()
        return many, later, fresh

    many, later, fresh = asyncio.run(main())
    assert all(s is many[0] for s in many) and later is many[0]
    assert all(c.reachable for c in many[0].clusters.values()), many[0].clusters
    assert many[0].get("rise").total("Tesla-T4") == 2
    assert fresh is not many[0]
    # nodes + pods per cluster, once for the 51 shared calls, once more for the fresh one
    assert sorted(requests) == sorted(2 * [("rise", "/api/v1/nodes"), ("rise", "/api/v1/pods"),
                                           ("bair", "/api/v1/nodes"), ("bair", "/api/v1/pods")])


def test_placement_probes_are_never_shared(requests) -> None:
    fleet = load(FLEET)

    async def main():
        await asyncio.gather(capacity.probe(fleet), capacity.probe(fleet))
        await clients.close_async_clients()

    asyncio.run(main())
    assert len(requests) == 8
