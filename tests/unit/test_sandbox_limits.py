"""Sandbox limits and leftovers. More clusters than the inotify limit holds are refused with
the fix: past it a Kueue exits ("too many open files") and every write then fails at its
webhook. Fleet files gone since an earlier `up` are forgotten."""

from __future__ import annotations

import pytest

from airflow_provider_skyshare.sandbox.cluster import SandboxError, State, check_inotify


def test_twenty_clusters_under_the_kernels_default_limit_are_refused_with_the_fix(tmp_path):
    limit = tmp_path / "max_user_instances"
    limit.write_text("128\n")
    check_inotify(2, limit)  # CI's sandbox
    with pytest.raises(SandboxError, match=r"20 clusters need about 156 inotify instances, and "
                       r"this machine allows 128 .* `sudo sysctl -w "
                       r"fs.inotify.max_user_instances=1024`"):
        check_inotify(20, limit)
    limit.write_text("1024\n")
    check_inotify(20, limit)


def test_a_machine_without_the_setting_is_not_checked(tmp_path):
    check_inotify(500, tmp_path / "absent")


def test_a_fleet_file_deleted_since_up_is_forgotten_not_fatal(tmp_path):
    """The sandbox outlives the clone that ran `up --fleet`: the next `up` (from another
    clone) drops the gone file instead of failing on it."""
    kept, gone = tmp_path / "kept.yaml", tmp_path / "gone.yaml"
    kept.write_text("clusters: []\n")
    state = State(fleets=[str(gone), str(kept)])
    assert state.forget_missing_fleets() == [str(gone)]
    assert state.fleets == [str(kept)]
    assert state.forget_missing_fleets() == []


def test_down_ignores_a_file_that_vanished_and_fails_on_anything_else():
    """`down` removes the state while etcd may still be deleting its last WAL file."""
    from airflow_provider_skyshare.sandbox.cluster import _gone_is_fine

    _gone_is_fine(None, "x.wal", (FileNotFoundError, FileNotFoundError("x.wal"), None))
    with pytest.raises(PermissionError):
        _gone_is_fine(None, "x", (PermissionError, PermissionError("x"), None))
