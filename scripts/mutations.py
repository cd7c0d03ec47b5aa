"""Mutation check of the follow loop's unit tests: break one rule, see which tests fail.

Each mutation changes one line of airflow_provider_skyshare/follow.py in a throwaway copy of
the repository and runs the pure unit tests there; a mutation no test notices is reported
as SURVIVED and the script exits 1.   python scripts/mutations.py   (./dev mutate)
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = "airflow_provider_skyshare/follow.py"
TESTS = ["tests/unit/test_follow.py", "tests/unit/test_supervisor.py"]

# (what it breaks, exact original text, replacement)
MUTATIONS = [
    ("placement after preemption: fail instead of moving",
     "new, actions = _begin_placing(state, now, moved_at=now)",
     'new, actions = _finish(state, Status.FAILED, "preempted")'),
    ("placement after preemption: move without probing",
     "return replace(state, phase=Phase.PLACING, placing_since=now, moved_at=moved_at,",
     "return replace(state, phase=Phase.WATCHING, placing_since=now, moved_at=moved_at,"),
    ("max_preemptions: one move too few",
     "elif state.timeline.moves > settings.max_preemptions:",
     "elif state.timeline.moves >= settings.max_preemptions:"),
    ("max_preemptions: never checked",
     "elif state.timeline.moves > settings.max_preemptions:",
     "elif False:"),
    ("unreachable grace: none",
     "and now - state.down_since >= state.job.settings.unreachable_grace)",
     "and now - state.down_since >= 0)"),
    ("unreachable grace: never over",
     "and now - state.down_since >= state.job.settings.unreachable_grace)",
     "and False)"),
    ("unreachable: on_unreachable=fail ignored",
     "and settings.on_unreachable is OnUnreachable.FAIL):",
     "and False):"),
    ("ambiguous create: no orphan",
     "if why.transient:  # no clear answer",
     "if False:  # no clear answer"),
    ("ambiguous create: no read-back, straight to the next cluster",
     "if not event.answer.ambiguous:",
     "if True:"),
    ("read-back: a pod the create made is not followed",
     "if labels.get(L_TASK_KEY) != state.job.identity.key:",
     "if True:"),
    ("read-back: a pod not created is never retried",
     "return self in (Refusal.UNREACHABLE, Refusal.NOT_CREATED)",
     "return self is Refusal.UNREACHABLE"),
    ("queue timeout: never",
     "if waited <= limit:",
     "if True:"),
    ("rebalance: moves an attempt admitted meanwhile",
     "if last is None or not _queued(state.pod):",
     "if last is None:"),
    ("claim: a later attempt is created without one",
     "if state.timeline.last is None:\n        return _create_action",
     "if True:\n        return _create_action"),
    ("claim: the loser creates its own attempt anyway",
     "        return _follow_successor(state, found)",
     "        return state, [_create_action(state, state.candidates[0])]"),
    ("claim: an expired claim is never taken over",
     "if found.expired(now):", "if False:"),
    ("claim: a live claim is taken over",
     "if found.expired(now):", "if True:"),
    ("claim: the created attempt is not named on it",
     "    if state.held is not None:\n        actions.append(_record(new, now))",
     "    if False:\n        actions.append(_record(new, now))"),
    ("wait_for_termination: never waits",
     "return (state.job.settings.wait_for_termination and last is not None",
     "return (False and last is not None"),
    ("wait_for_termination: the pod's DELETED does not end the wait",
     "if event.deleted or phase in TERMINAL_PHASES:", "if phase in TERMINAL_PHASES:"),
    ("a gone pod's Events are ignored",
     "if event.outcome is None:", "if True:"),
]


def run(copy: Path) -> list[str]:
    """The ids of the tests that fail in this copy."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o",
         "addopts=", *TESTS], cwd=copy, capture_output=True, text=True,
        env={**_env(), "PYTHONPATH": str(copy)})
    return re.findall(r"^FAILED (\S+)", done.stdout, re.MULTILINE)


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def main() -> int:
    survived = 0
    with tempfile.TemporaryDirectory(prefix="skyshare-mutants-") as tmp:
        copy = Path(tmp) / "repo"
        shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".git", "*.pyc", "site"))
        source = (copy / TARGET).read_text()
        if run(copy):
            print("the unit tests fail without any mutation: fix them first")
            return 2
        for what, old, new in MUTATIONS:
            if source.count(old) != 1:
                print(f"STALE    {what}: the original text is not in {TARGET} exactly once")
                survived += 1
                continue
            (copy / TARGET).write_text(source.replace(old, new))
            failed = run(copy)
            (copy / TARGET).write_text(source)
            if failed:
                print(f"KILLED   {what}: {len(failed)} failing, e.g. {failed[0]}")
            else:
                print(f"SURVIVED {what}")
                survived += 1
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
