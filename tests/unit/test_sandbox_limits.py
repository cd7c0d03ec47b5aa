"""The sandbox refuses, with the fix, more clusters than the machine's inotify limit holds:
past it a Kueue exits ("too many open files") and every write then fails at its webhook."""

from __future__ import annotations

import pytest

from airflow_provider_skyshare.sandbox.cluster import SandboxError, check_inotify


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
