"""Pinned versions, where the build cache and the runtime state live, and the ports."""

from __future__ import annotations

import os
from pathlib import Path

KUBERNETES = "v1.36.4"
ETCD = "v3.6.8"
KWOK = "v0.8.0"
KUEUE = "v0.19.2"
VERSIONS_KEY = f"k8s-{KUBERNETES}_etcd-{ETCD}_kwok-{KWOK}_kueue-{KUEUE}"
BINARIES = ("kube-apiserver", "kube-scheduler", "kube-controller-manager", "etcd", "kwok", "kueue")
GOWRAP = Path(__file__).resolve().parent / "gowrap"
# Kueue (with internal cert management off) reads its metrics certificate from this fixed path.
KUEUE_METRICS_CERTS = Path("/etc/kueue/metrics/certs")


def cache_dir() -> Path:
    root = os.environ.get("SKYSHARE_SANDBOX_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "skyshare-sandbox")
    return Path(root) / VERSIONS_KEY


def bin_dir() -> Path:
    return cache_dir() / "bin"


def kueue_manifests() -> Path:
    return cache_dir() / "kueue-manifests"


def state_dir() -> Path:
    root = os.environ.get("SKYSHARE_SANDBOX_HOME") or os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"),
        "skyshare-sandbox")
    return Path(root)


def port_base() -> int:
    return int(os.environ.get("SKYSHARE_SANDBOX_PORT_BASE", "17000"))


def etcd_ports() -> tuple[int, int]:
    base = port_base()
    return base + 79, base + 80


def cluster_ports(index: int) -> dict[str, int]:
    """A block of ports per cluster, from its stable index in the sandbox."""
    start = port_base() + 100 + index * 10
    return {"apiserver": start, "scheduler": start + 1, "webhook": start + 2,
            "kueue_health": start + 3, "kwok": start + 4,
            "controllers": start + 5}
