"""The soak's fault injector never leaves an apiserver down for the drain.

Two soaks ended with rise's apiserver stopped through the whole drain: the faults were
cancelled while a stop was under way, and the restart in a ``finally`` never ran. A fake
sandbox records the calls; the outage's timing comes from a seeded Random.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest

from airflow_provider_skyshare.sandbox import api
from airflow_provider_skyshare.sandbox.cluster import SandboxError
from scripts import soak


class FakeBox:
    """Apiservers that stop slowly (as a graceful shutdown does) and start on demand."""

    def __init__(self, kubeconfig: str, clusters: list[str], *, stopping: threading.Event,
                 fail_start: bool = False) -> None:
        self.up = dict.fromkeys(clusters, True)
        self.stopping, self.fail_start = stopping, fail_start
        self.calls: list[tuple[str, str]] = []

    def stop_component(self, name: str, component: str) -> None:
        self.calls.append(("stop", name))
        self.stopping.set()
        time.sleep(0.3)
        self.up[name] = False

    def start_component(self, name: str, component: str) -> None:
        self.calls.append(("start", name))
        if self.fail_start and not self.up[name]:
            raise SandboxError(f"{name} apiserver did not answer /readyz within 60 s")
        self.up[name] = True


@pytest.fixture
def box(monkeypatch: pytest.MonkeyPatch) -> FakeBox:
    stopping = threading.Event()
    made = FakeBox("", list(soak.CLUSTERS), stopping=stopping)
    monkeypatch.setenv("KUBECONFIG", "/nonexistent")
    monkeypatch.setattr(api, "Sandbox", lambda *a, **k: made)
    monkeypatch.setattr(soak.random.Random, "uniform", lambda self, a, b: a / 1000)
    monkeypatch.setattr(soak.random.Random, "random", lambda self: 0.9)  # outages only
    return made


async def _cancel_while_stopping(box: FakeBox) -> list[str]:
    outages: set[asyncio.Future[None]] = set()
    faults = asyncio.create_task(
        soak.inject(random.Random(1), time.time() + 60, soak.Tally(), outages))
    await asyncio.to_thread(box.stopping.wait, 5)
    faults.cancel()
    soak.report_faults(await asyncio.gather(faults, return_exceptions=True))
    return await soak.restore(outages)


def test_an_outage_cancelled_mid_stop_is_restarted_before_the_drain(box: FakeBox) -> None:
    down = asyncio.run(_cancel_while_stopping(box))

    assert down == []
    assert all(box.up.values()), box.up
    stopped = next(name for verb, name in box.calls if verb == "stop")
    assert [verb for verb, name in box.calls if name == stopped][-1] == "start"


def test_importing_the_soak_leaves_the_sandbox_settings_alone() -> None:
    import os

    assert os.environ.get("SKYSHARE_SANDBOX_HOME", "") != str(soak.STATE / "sandbox")


def test_an_apiserver_that_does_not_come_back_is_reported_not_hidden(
        box: FakeBox, caplog: pytest.LogCaptureFixture) -> None:
    box.fail_start = True

    down = asyncio.run(_cancel_while_stopping(box))

    stopped = next(name for verb, name in box.calls if verb == "stop")
    assert down == [stopped]
    assert "still down before the drain" in caplog.text
    assert "an apiserver restart failed" in caplog.text
