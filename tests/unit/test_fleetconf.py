"""A deferred task names its fleet (source, digest) instead of carrying it (benchmark (h)); the
triggerer reads that fleet again under the worker's rule, and waits rather than move work whose
pod it could no longer reach."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from airflow_provider_skyshare import fleetconf, fleetfile
from airflow_provider_skyshare.fleet import FleetError
from airflow_provider_skyshare.follow import Follow
from airflow_provider_skyshare.timeline import Attempt, Timeline
from airflow_provider_skyshare.triggers import pod as trigger_module

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "dags" / "fleet.yaml"
TEAMS = ROOT / "dags" / "fleet-teams.yaml"


@pytest.fixture
def files(monkeypatch, tmp_path):
    """The platform's fleet files, copies the tests may edit: the seed's (the default) and
    the teams' one."""
    seed, teams = tmp_path / "fleet.yaml", tmp_path / "fleet-teams.yaml"
    shutil.copy(SEED, seed)
    shutil.copy(TEAMS, teams)
    monkeypatch.delenv("AIRFLOW__SKYSHARE__FLEET_VARIABLE", raising=False)
    monkeypatch.setenv("AIRFLOW__SKYSHARE__FLEET_FILE", f"{seed},{teams}")
    return seed, teams


class Lines(logging.Handler):
    """The trigger's log lines (its logger is a plain one here: Airflow's is structlog)."""

    def __init__(self, trigger: trigger_module.MultiClusterPodTrigger) -> None:
        super().__init__(logging.INFO)
        trigger._log = logging.getLogger(f"test_fleetconf.{id(trigger)}")
        trigger._log.setLevel(logging.INFO)
        trigger._log.addHandler(self)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def at(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]


def rewrite(path: Path, text: str) -> None:
    """An edit the fleet cache sees, however coarse the file system's clock."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    os.utime(path, ns=(before + 10**9, before + 10**9))


def saved_state(fleet_path: Path, cluster: str = "bair", org: str = "rise") -> dict:
    """A task of `org` deferred after its first placement on `cluster`, as its trigger row
    keeps it (through JSON)."""
    from benchmarks import worker  # the real operator, and the context a worker gives it

    op = worker.skyshare_operator(str(fleet_path))
    ti = worker.TaskInstance("d", "t", "r1", bundle=org)
    sup = op._supervisor(worker.context_of(ti))
    attempt = Attempt(1, cluster, "borrower", "pod-1", f"skyshare-{org}", 1.0, why="borrowed")
    return json.loads(json.dumps(Follow(sup.job, Timeline((attempt,))).to_dict()))


def test_the_row_names_the_fleet_and_its_version_not_its_clusters(files):
    seed, _ = files
    state = saved_state(seed)
    fleet = fleetfile.load(seed)
    assert state["fleet"] == {"source": str(seed), "digest": fleet.digest}
    saved = fleetconf.saved_fleet(state)
    assert (saved.fleet.to_dict(), saved.changed) == (fleet.to_dict(), False)
    assert Follow.from_dict(state, saved.fleet).job.fleet.view == "rise"


def test_a_changed_fleet_is_followed_by_its_current_version_and_says_so(files):
    seed, _ = files
    state = saved_state(seed)
    rewrite(seed, seed.read_text().replace("probe_timeout_seconds: 3", "probe_timeout_seconds: 4"))
    saved = fleetconf.saved_fleet(state)
    assert saved.changed and saved.fleet.policy.probe_timeout_seconds == 4
    assert f"the fleet {seed} changed since this task was placed" in saved.note()


def test_the_triggerer_reads_only_a_fleet_the_platform_configures(files, monkeypatch, tmp_path):
    _, teams = files
    assert set(fleetconf.fleet_at(str(teams)).clusters) == {"campus"}
    own = tmp_path / "mine.yaml"
    shutil.copy(SEED, own)
    with pytest.raises(FleetError, match="is not a fleet this process is configured with") as err:
        fleetconf.fleet_at(str(own))
    assert err.value.fix == ("give the triggerer the workers' [skyshare] fleet_file and "
                             "fleet_variable")
    monkeypatch.setenv("AIRFLOW__SKYSHARE__FLEET_VARIABLE", "skyshare_fleet")
    monkeypatch.setenv("AIRFLOW_VAR_SKYSHARE_FLEET", SEED.read_text())
    assert set(fleetconf.fleet_at("Airflow Variable 'skyshare_fleet'").clusters) == {"rise", "bair"}
    with pytest.raises(FleetError, match="configured with \\(Airflow Variable 'skyshare_fleet', "):
        fleetconf.fleet_at("Airflow Variable 'another'")
    # where Airflow configures no fleet at all (development), the task's own file, as the
    # worker (which writes its absolute path): never one relative to the triggerer's directory
    monkeypatch.delenv("AIRFLOW__SKYSHARE__FLEET_VARIABLE")
    monkeypatch.delenv("AIRFLOW__SKYSHARE__FLEET_FILE")
    assert set(fleetconf.fleet_at(str(own)).clusters) == {"rise", "bair"}
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FleetError, match="is not a fleet this process is configured with"):
        fleetconf.fleet_at("mine.yaml")


def test_a_trigger_row_of_the_previous_version_is_followed_by_the_platforms_fleet(files):
    """Rows written before references carry the whole fleet: it still loads after an upgrade,
    but the fleet its fleet_source names decides (a row cannot bring a fleet of its own)."""
    seed, _ = files
    state = saved_state(seed)
    fleet = fleetfile.load(seed).for_org("rise")
    old = json.loads(json.dumps({**state, "fleet": fleet.to_dict(), "fleet_source": str(seed)}))
    saved = fleetconf.saved_fleet(old)
    assert (saved.fleet.source, saved.changed) == (str(seed), False)
    assert set(Follow.from_dict(old, saved.fleet).job.fleet.clusters) == {"rise", "bair"}
    forged = json.loads(json.dumps(old))
    forged["fleet"]["clusters"][0]["context"] = "somebody-elses"
    saved = fleetconf.saved_fleet(forged)
    assert saved.changed and saved.fleet.clusters["rise"].context == "rise-operator"
    with pytest.raises(FleetError, match="is not a fleet this process is configured with"):
        fleetconf.saved_fleet({**old, "fleet_source": "/elsewhere/fleet.yaml"})


def test_the_trigger_waits_while_the_fleet_lacks_the_running_pods_cluster(files, monkeypatch):
    """bair taken out of the fleet while rise's pod runs there: following (or moving) now
    could leave that pod running beside a new one. The trigger waits, says what to fix, and
    follows once the cluster is back."""
    seed, _ = files
    state = saved_state(seed, cluster="bair")
    original = seed.read_text()
    head, _ = original.split("  - name: bair\n    owner: bair\n")
    rewrite(seed, head)  # the fleet without cluster bair (its org stays)
    trigger = trigger_module.MultiClusterPodTrigger(state=state)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        rewrite(seed, original)  # the platform team puts it back

    monkeypatch.setattr(trigger_module, "_pause", sleep)
    lines = Lines(trigger)
    follow = asyncio.run(trigger._saved())
    assert waits == [trigger_module.FLEET_RETRY_SECONDS]
    assert "bair" in follow.job.fleet.clusters
    (error,) = lines.at(logging.ERROR)
    assert "attempt 1 runs as pod pod-1 on cluster bair, which the fleet" in error
    assert "no longer gives org rise. Fix: put the cluster back in the fleet" in error
    # the first read: changed (bair gone); the second: the version it was placed with
    assert len(lines.at(logging.WARNING)) == 1


def test_the_trigger_waits_while_its_fleet_cannot_be_read(files, monkeypatch):
    seed, _ = files
    state = saved_state(seed)
    moved = seed.with_name("elsewhere.yaml")
    seed.rename(moved)
    trigger = trigger_module.MultiClusterPodTrigger(state=state)

    async def sleep(_seconds: float) -> None:
        moved.rename(seed)

    monkeypatch.setattr(trigger_module, "_pause", sleep)
    lines = Lines(trigger)
    follow = asyncio.run(trigger._saved())
    assert follow.timeline.last.cluster == "bair"
    (error,) = lines.at(logging.ERROR)
    assert "file not found" in error and "trying again in 60s" in error


def test_a_finished_last_attempt_on_a_dropped_cluster_is_waited_for_too(files, monkeypatch):
    """A resumed follower watches the last attempt even when it has ended (its pod may still
    be there to delete): its cluster must be in the fleet as well."""
    from dataclasses import replace

    from airflow_provider_skyshare.timeline import Timeline as T

    seed, _ = files
    state = saved_state(seed, cluster="bair")
    fleet = fleetconf.saved_fleet(state).fleet
    follow = Follow.from_dict(state, fleet)
    ended = replace(follow.timeline.last, ended_at=2.0, outcome="Succeeded")
    head, _ = seed.read_text().split("  - name: bair\n    owner: bair\n")
    rewrite(seed, head)
    without = Follow.from_dict(state, fleetconf.saved_fleet(state).fleet)
    assert replace(without, timeline=T((ended,))).unreachable_attempt() == ended
    earlier = replace(ended, number=1)
    now = replace(ended, number=2, cluster="rise", ended_at=None)
    assert replace(without, timeline=T((earlier, now))).unreachable_attempt() is None


def test_left_over_pods_on_a_dropped_cluster_are_named_not_a_failure(files):
    from dataclasses import replace

    from airflow_provider_skyshare.follow import Orphan

    seed, _ = files
    state = saved_state(seed, cluster="rise")
    head, _ = seed.read_text().split("  - name: bair\n    owner: bair\n")
    rewrite(seed, head)
    follow = Follow.from_dict(state, fleetconf.saved_fleet(state).fleet)
    kept, lost = Orphan("rise", "skyshare-rise", "a"), Orphan("bair", "skyshare-rise", "b")
    follow = replace(follow, orphans=(kept, lost))
    assert follow.lost_orphans() == (lost,)
    trigger = trigger_module.MultiClusterPodTrigger(state=state)
    lines = Lines(trigger)
    assert trigger_module._without_lost_orphans(follow, trigger.log).orphans == (kept,)
    (warning,) = lines.at(logging.WARNING)
    assert warning.startswith("left-over pod b in skyshare-rise on cluster bair is not deleted")
