"""`skyshare-sandbox build`: compile the pinned control plane into the versioned cache.

kube-apiserver, kube-scheduler, kube-controller-manager and etcd come from the wrapper module in gowrap/ (the
Kubernetes module replaces its staging modules with local paths, which only resolve inside
its own repository; `go install` of etcd fails on its replace directives). KWOK and Kueue
are built inside their own module (their go.mod pins their dependencies; `go install
module@version` is refused here because the proxy hides Kueue's version list). Existing
binaries are reused; nothing is written into the repository.
"""

from __future__ import annotations

import hashlib
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


def _install(cmd: list[str], pkg: str, dest: Path, cwd: Path, env: dict[str, str]) -> None:
    """Build beside `dest`, then rename over it: a running component keeps its (now deleted)
    binary, which is how `up` knows to restart it."""
    tmp = dest.with_name(dest.name + ".new")
    _run([*cmd, "-o", str(tmp), pkg], cwd, dest.name, env)
    os.replace(tmp, dest)


def _run(cmd: list[str], cwd: Path, what: str, env: dict[str, str] | None = None) -> None:
    start = time.monotonic()
    print(f"  building {what} ...", flush=True)
    proc = subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"building {what} failed:\n{proc.stderr[-4000:]}")
    print(f"  built {what} in {time.monotonic() - start:.0f}s", flush=True)


# KWOK v0.8.0 starts its stage controllers in Go map order (`Controller.Start` ranges over
# LocalStages). When the pod controller comes first, it keeps a nil "node not held" check and
# plays every pod stage on a node whose Lease another holds: a node that is down still runs,
# completes and deletes its pods (21 of 30 KWOK restarts here; 0 of 30 patched). The patch
# starts the node controllers (and the Lease controller the check belongs to) first. It is
# applied to a copy of the module (Go refuses overlays of the module cache).
KWOK_PATCHES = {
    "pkg/kwok/controllers/controller.go": (
        ("import (\n", "import (\n\t\"sort\"\n"),
        ("\t\tfor ref, stage := range c.conf.LocalStages {\n",
         "\t\trefs := make([]internalversion.StageResourceRef, 0, len(c.conf.LocalStages))\n"
         "\t\tfor ref := range c.conf.LocalStages {\n"
         "\t\t\trefs = append(refs, ref)\n"
         "\t\t}\n"
         "\t\tsort.SliceStable(refs, func(i, j int) bool {\n"
         "\t\t\treturn refs[i] == nodeRef && refs[j] != nodeRef\n"
         "\t\t})\n"
         "\t\tfor _, ref := range refs { // skyshare: node controllers first\n"
         "\t\t\tstage := c.conf.LocalStages[ref]\n"),
    ),
}


def kwok_source(module: Path, work: Path) -> Path:
    """A patched copy of KWOK's module in `work`; fails, naming the file, when the upstream
    text moved (a new KWOK version)."""
    dest = work / f"kwok-{paths.KWOK}-src"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(module, dest, ignore=shutil.ignore_patterns("demo", "site", "test", ".git*"))
    for p in [dest, *dest.rglob("*")]:
        p.chmod(0o644 if p.is_file() else 0o755)  # the module cache's copies are read-only
    for rel, edits in KWOK_PATCHES.items():
        text = (dest / rel).read_text()
        for old, new in edits:
            if text.count(old) != 1:
                raise BuildError(f"KWOK {paths.KWOK}: {rel} no longer has the text the "
                                 "sandbox patches (KWOK_PATCHES in sandbox/build.py): update "
                                 "the patch")
            text = text.replace(old, new)
        (dest / rel).write_text(text)
    return dest


def _kwok_stamp() -> Path:
    """Names the patch the kwok binary was built with: a changed patch rebuilds KWOK alone."""
    digest = hashlib.sha256(json.dumps(KWOK_PATCHES).encode()).hexdigest()[:12]
    return paths.bin_dir() / f".kwok-patch-{digest}"


def missing(force: bool = False) -> list[str]:
    """The binaries to build: absent, or KWOK built without the current patch."""
    out = paths.bin_dir()
    return [b for b in paths.BINARIES if force or not (out / b).exists()
            or (b == "kwok" and not _kwok_stamp().exists())]


def needed() -> bool:
    return bool(missing()) or not (paths.kueue_manifests() / ".complete").exists()


def build(force: bool = False) -> Path:
    """Build every missing binary; returns the bin directory."""
    out = paths.bin_dir()
    out.mkdir(parents=True, exist_ok=True)
    missing_ = missing(force)
    manifests_ready = (paths.kueue_manifests() / ".complete").exists()
    if not missing_ and manifests_ready:
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
        if name in missing_:
            _install([go, "build", "-ldflags", ldflags], pkg, out / name, wrap, env)
    for name, module, pkg in (("kwok", f"sigs.k8s.io/kwok@{paths.KWOK}", "./cmd/kwok"),
                              ("kueue", f"sigs.k8s.io/kueue@{paths.KUEUE}", "./cmd/kueue")):
        if name in missing_:
            src = _module_dir(go, module)
            if name == "kwok":
                src = kwok_source(src, paths.cache_dir())
            _install([go, "build", "-ldflags", "-s -w"], pkg, out / name, src, env)
            if name == "kwok":
                for old in out.glob(".kwok-patch-*"):
                    old.unlink()
                _kwok_stamp().touch()
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
