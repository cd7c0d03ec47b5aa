"""`skyshare-sandbox build`: compile the pinned control plane into the versioned cache.

kube-apiserver, kube-scheduler, kube-controller-manager and etcd come from the wrapper module in gowrap/ (the
Kubernetes module replaces its staging modules with local paths, which only resolve inside
its own repository; `go install` of etcd fails on its replace directives). KWOK and Kueue
are built inside their own module (their go.mod pins their dependencies; `go install
module@version` is refused here because the proxy hides Kueue's version list). Existing
binaries are reused; nothing is written into the repository.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from airflow_provider_skyshare.sandbox import paths

VERSION_PKG = "k8s.io/component-base/version"


class BuildError(RuntimeError):
    pass


def _go() -> str:
    go = shutil.which("go") or "/usr/local/go/bin/go"
    if not os.path.exists(go):
        raise BuildError("Go is needed to build the sandbox (go 1.26+): install it and retry")
    return go


def _ldflags_kubernetes() -> str:
    major, minor = paths.KUBERNETES.lstrip("v").split(".")[:2]
    stamps = {
        "gitVersion": paths.KUBERNETES, "gitMajor": major, "gitMinor": minor,
        "gitCommit": "0" * 40, "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
    }
    # Kueue exits when the apiserver's /version is not semver: stamp it like a release.
    return "-s -w " + " ".join(f"-X {VERSION_PKG}.{k}={v}" for k, v in stamps.items())


def _module_dir(go: str, module: str) -> Path:
    out = subprocess.run([go, "mod", "download", "-json", module], check=True,
                         capture_output=True, text=True).stdout
    return Path(json.loads(out)["Dir"])


def _run(cmd: list[str], cwd: Path, what: str, env: dict[str, str] | None = None) -> None:
    start = time.monotonic()
    print(f"  building {what} ...", flush=True)
    proc = subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"building {what} failed:\n{proc.stderr[-4000:]}")
    print(f"  built {what} in {time.monotonic() - start:.0f}s", flush=True)


def build(force: bool = False) -> Path:
    """Build every missing binary; returns the bin directory."""
    out = paths.bin_dir()
    out.mkdir(parents=True, exist_ok=True)
    missing = [b for b in paths.BINARIES if force or not (out / b).exists()]
    manifests_ready = (paths.kueue_manifests() / ".complete").exists()
    if not missing and manifests_ready:
        print(f"sandbox binaries cached in {out}")
        return out
    go = _go()
    total = time.monotonic()
    print(f"building the sandbox into {paths.cache_dir()} (cold: several minutes)", flush=True)
    env = {"GOFLAGS": "-mod=mod -trimpath"}
    wrap = paths.GOWRAP
    targets = {
        "kube-apiserver": ("k8s.io/kubernetes/cmd/kube-apiserver", _ldflags_kubernetes()),
        "kube-scheduler": ("k8s.io/kubernetes/cmd/kube-scheduler", _ldflags_kubernetes()),
        "kube-controller-manager": ("k8s.io/kubernetes/cmd/kube-controller-manager",
                                    _ldflags_kubernetes()),
        "etcd": ("go.etcd.io/etcd/server/v3", "-s -w"),
    }
    for name, (pkg, ldflags) in targets.items():
        if name in missing:
            _run([go, "build", "-ldflags", ldflags, "-o", str(out / name), pkg], wrap, name, env)
    for name, module, pkg in (("kwok", f"sigs.k8s.io/kwok@{paths.KWOK}", "./cmd/kwok"),
                              ("kueue", f"sigs.k8s.io/kueue@{paths.KUEUE}", "./cmd/kueue")):
        if name in missing:
            src = _module_dir(go, module)
            _run([go, "build", "-ldflags", "-s -w", "-o", str(out / name), pkg], src, name, env)
    if not manifests_ready:
        _copy_kueue_manifests(_module_dir(go, f"sigs.k8s.io/kueue@{paths.KUEUE}"))
    print(f"sandbox built in {time.monotonic() - total:.0f}s", flush=True)
    return out


def _copy_kueue_manifests(src: Path) -> None:
    dest = paths.kueue_manifests()
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "crd").mkdir(parents=True)
    for crd in sorted((src / "config/components/crd/bases").glob("*.yaml")):
        shutil.copy(crd, dest / "crd" / crd.name)
    shutil.copy(src / "config/components/webhook/manifests.yaml", dest / "webhooks.yaml")
    for p in dest.rglob("*"):
        p.chmod(0o644 if p.is_file() else 0o755)
    (dest / ".complete").touch()


def main() -> int:
    try:
        build()
    except BuildError as exc:
        print(f"skyshare-sandbox build: {exc}", file=sys.stderr)
        return 1
    return 0
