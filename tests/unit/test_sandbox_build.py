"""The sandbox's build: KWOK's stage-order patch, and components whose binary was rebuilt.

The patch itself is proven on the real sandbox by tests/integration/test_node_loss.py (a
down node's evicted pod stays until the node is back); here, that it applies to the pinned
KWOK exactly once and refuses, naming the fix, a source it no longer fits.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from airflow_provider_skyshare.sandbox import build
from airflow_provider_skyshare.sandbox.cluster import rebuilt

CONTROLLER = "pkg/kwok/controllers/controller.go"
START = """import (
\t"context"
)

func (c *Controller) Start(ctx context.Context) error {
\tif len(c.conf.LocalStages) != 0 {
\t\tfor ref, stage := range c.conf.LocalStages {
\t\t\t_ = stage
\t\t}
\t}
}
"""


def _module(tmp_path, text: str):
    module = tmp_path / "kwok@v0.8.0"
    (module / CONTROLLER).parent.mkdir(parents=True)
    (module / CONTROLLER).write_text(text)
    (module / "demo").mkdir()
    (module / "go.mod").write_text("module sigs.k8s.io/kwok\n")
    (module / CONTROLLER).chmod(0o444)  # as the module cache keeps it
    return module


def test_the_copy_starts_the_node_controllers_first_and_leaves_the_module_alone(tmp_path):
    module = _module(tmp_path, START)
    src = build.kwok_source(module, tmp_path / "work")
    patched = (src / CONTROLLER).read_text()
    assert '\t"sort"\n' in patched
    assert "for ref, stage := range c.conf.LocalStages" not in patched
    assert "return refs[i] == nodeRef && refs[j] != nodeRef" in patched
    assert "stage := c.conf.LocalStages[ref]" in patched
    assert (module / CONTROLLER).read_text() == START
    assert not (src / "demo").exists() and (src / "go.mod").exists()
    again = build.kwok_source(module, tmp_path / "work")  # a rebuild starts from a fresh copy
    assert (again / CONTROLLER).read_text() == patched


def test_a_kwok_whose_source_moved_is_refused_with_the_fix(tmp_path):
    module = _module(tmp_path, START.replace("for ref, stage := range", "for r, s := range"))
    with pytest.raises(build.BuildError, match=r"controller.go no longer has the text the sandbox "
                       r"patches \(KWOK_PATCHES in sandbox/build.py\): update the patch"):
        build.kwok_source(module, tmp_path / "work")


def test_the_pinned_kwok_takes_the_patch():
    """The module the sandbox builds (when Go and its module cache are on this machine)."""
    go = shutil.which("go") or "/usr/local/go/bin/go"
    try:
        module = build._module_dir(go, f"sigs.k8s.io/kwok@{build.paths.KWOK}")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("Go or the KWOK module is not available here (the sandbox build needs both)")
    text = (module / CONTROLLER).read_text()
    for old, _ in build.KWOK_PATCHES[CONTROLLER]:
        assert text.count(old) == 1, old
    assert '"sort"' not in text  # the patch adds the import; a second one would not compile


def test_a_process_whose_binary_was_replaced_is_seen_as_rebuilt(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "cache").symlink_to(real)  # the bin dir's path may go through a link
    binary = tmp_path / "cache" / "component"
    shutil.copy(sys.executable, binary)
    proc = subprocess.Popen([binary, "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)
    try:
        assert not rebuilt(proc.pid, binary)
        binary.with_name("component.new").write_bytes(binary.read_bytes())
        binary.with_name("component.new").replace(binary)  # as build installs a binary
        assert rebuilt(proc.pid, binary)
        assert not rebuilt(proc.pid, tmp_path / "other")  # a reused pid: not ours to restart
    finally:
        proc.communicate(b"")
    assert not rebuilt(proc.pid, binary) and not rebuilt(None, binary)
