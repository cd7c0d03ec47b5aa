"""`./dev stop` and `./dev demo --teardown`: stop the demo's Airflow, never run the scenario."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from scripts import demo
from scripts.scenario import Airflow, Shape


@pytest.fixture
def stopped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple[Shape, Path]]:
    """The (shape, home) of each Airflow stopped; starting one fails the test."""
    calls: list[tuple[Shape, Path]] = []
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    monkeypatch.setattr(Airflow, "stop", lambda self, purge=False: calls.append((self.shape, self.home)))
    monkeypatch.setattr(Airflow, "start", lambda self: pytest.fail("the demo started Airflow"))
    monkeypatch.setattr(demo, "run_scenario", lambda *a, **k: pytest.fail("the demo ran"))
    return calls


def run(monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    monkeypatch.setattr(sys, "argv", ["demo.py", *argv])
    return demo.main()


@pytest.mark.parametrize("flag", ["--stop", "--teardown"])
def test_stop_and_teardown_only_stop(flag: str, stopped: list, monkeypatch: pytest.MonkeyPatch) -> None:
    for shape in Shape:
        demo.home_of(shape).mkdir(parents=True)
    assert run(monkeypatch, flag) == 0
    assert [shape for shape, _ in stopped] == list(Shape)  # no --shape: every shape


def test_stop_one_shape(stopped: list, monkeypatch: pytest.MonkeyPatch) -> None:
    for shape in Shape:
        demo.home_of(shape).mkdir(parents=True)
    assert run(monkeypatch, "--stop", "--shape", "production") == 0
    assert stopped == [(Shape.PRODUCTION, demo.home_of(Shape.PRODUCTION))]


def test_stop_without_a_demo_says_so(stopped: list, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert run(monkeypatch, "--teardown") == 0
    assert stopped == []
    assert "no standalone demo Airflow" in capsys.readouterr().out


def test_dev_stop_leaves_the_sandbox_unless_asked() -> None:
    """./dev is not run here (it re-points the shared environment): its stop branch is read."""
    dev = (Path(__file__).resolve().parents[2] / "dev").read_text()
    branch = dev[dev.index("    stop)"):dev.index(";;", dev.index("    stop)"))]
    assert "scripts/demo.py --stop" in branch
    assert 'if [ -n "$sandbox" ]; then\n            skyshare-sandbox down' in branch
