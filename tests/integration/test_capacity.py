"""Capacity probes against the sandbox's apiservers, counted at the provider's one request door."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_provider_skyshare import capacity, clients, inventory, kube
from airflow_provider_skyshare.fleetfile import load
from airflow_provider_skyshare.names import POLICY_PATHS

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
    # nodes, pods, the tier policy and its binding per cluster, once for the 51 shared
    # calls, once more for the fresh one
    assert sorted(requests) == sorted(2 * [(c, path) for c in ("rise", "bair") for path in
                                           ("/api/v1/nodes", "/api/v1/pods", *POLICY_PATHS)])


def test_placement_probes_are_never_shared(requests) -> None:
    fleet = load(FLEET)

    async def main():
        await asyncio.gather(capacity.probe(fleet), capacity.probe(fleet))
        await clients.close_async_clients()

    asyncio.run(main())
    assert len(requests) == 16


FRESH_PROBE = """
import asyncio, json, sys, time
assert "kubernetes_asyncio" not in sys.modules
from airflow_provider_skyshare import capacity, clients
from airflow_provider_skyshare.fleetfile import load

async def main():
    start = time.monotonic()
    snap = await capacity.probe(load(sys.argv[1]))
    await clients.close_async_clients()
    return snap, time.monotonic() - start

snap, took = asyncio.run(main())
print(json.dumps({"took": took, "clusters": {n: [c.reachable, c.error] for n, c in snap.clusters.items()}}))
"""


def test_first_probe_of_a_fresh_process_on_a_busy_machine_sees_every_cluster(kube_env, tmp_path):
    """A worker's task or an API server's first page is a fresh process: making its clients
    (importing kubernetes_asyncio, reading the kubeconfig) takes seconds on a busy machine and
    must not count as the clusters' answer time. As on a fresh machine, no module has its
    bytecode yet (an empty PYTHONPYCACHEPREFIX: the import alone then takes about 3 s), the
    deadline is 1 s and one core is kept busy: every cluster must still answer."""
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(FLEET.read_text().replace("probe_timeout_seconds: 3", "probe_timeout_seconds: 1"))
    assert "probe_timeout_seconds: 1" in fleet.read_text()
    hog = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])  # one core, 120 s at most
    try:
        out = subprocess.run([sys.executable, "-c", FRESH_PROBE, str(fleet)], capture_output=True,
                             text=True, timeout=120, cwd=FLEET.parents[1],
                             env={**os.environ, "PYTHONPYCACHEPREFIX": str(tmp_path / "pyc")})
    finally:
        hog.kill()
        hog.wait()
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.splitlines()[-1])
    print(f"fresh process, one core busy: probe took {result['took']:.2f}s")
    assert result["clusters"] == {"rise": [True, ""], "bair": [True, ""]}, result


BUSY_LOOP = "import time\nend = time.monotonic() + 120\nwhile time.monotonic() < end:\n    pass\n"


def test_a_triggerers_live_capacity_agrees_with_a_list_and_follows_a_new_pod(requests, admin):
    """inventory.py on the real apiservers: once in step, a triggerer's probe reads nodes and
    pods from memory, says what a fresh list says, and sees a pod that takes a GPU (and gives
    it back) from the watch."""
    fleet = load(FLEET)
    body = {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "live-capacity-probe", "namespace": "kube-system"},
            "spec": {"nodeName": "rise-gpu-0", "tolerations": [{"operator": "Exists"}],
                     "containers": [{"name": "c", "image": "busybox", "resources": {
                         "limits": {"nvidia.com/gpu": "1"}}}]}}

    def used(snap) -> int:
        return sum(n.used for n in snap.get("rise").nodes)

    async def until(what: str, ok, deadline: float = 15.0):
        end = asyncio.get_running_loop().time() + deadline
        while True:
            snap = await capacity.probe(fleet)
            if ok(snap):
                return snap
            assert asyncio.get_running_loop().time() < end, f"live capacity: {what}"
            await asyncio.sleep(0.05)

    async def main():
        inventory.keep_live()
        listed = await capacity.probe(fleet)  # lists, and starts each cluster's inventory
        await until("in step", lambda _: all(inventory.of(c.as_reader()).synced
                                             for c in fleet.clusters.values()))
        requests.clear()
        first_live = await capacity.probe(fleet)
        policy_reads = list(requests)
        requests.clear()
        live = await capacity.probe(fleet)
        silent = list(requests)
        await asyncio.to_thread(admin["rise"].create_namespaced_pod, "kube-system", body)
        try:
            taken = await until("the new pod's GPU", lambda s: used(s) == used(live) + 1)
        finally:
            await asyncio.to_thread(admin["rise"].delete_namespaced_pod, body["metadata"]["name"],
                                    "kube-system", grace_period_seconds=0)
        back = await until("the GPU given back", lambda s: used(s) == used(live))
        for inv in list(inventory._inventories.values()):
            await inv.close()
        await clients.close_async_clients()
        return listed, first_live, live, policy_reads, silent, taken, back

    listed, first_live, live, policy_reads, silent, taken, back = asyncio.run(main())
    for snap in (first_live, live):
        for name in ("rise", "bair"):
            assert snap.get(name).nodes == listed.get(name).nodes, name
            assert snap.get(name).holders == listed.get(name).holders, name
    # no list: each live probe asks each cluster only for its tier policy (which also shows
    # that it answers: its watches alone could be silently stale)
    policy = sorted((c, p) for c in ("rise", "bair") for p in POLICY_PATHS)
    assert sorted(policy_reads) == policy and sorted(silent) == policy
    assert used(taken) == used(live) + 1 and used(back) == used(live)
