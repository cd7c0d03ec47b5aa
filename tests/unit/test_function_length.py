"""Runtime functions read top to bottom in one screen: at most 40 lines each (issue 15).

The Airflow-facing classes (operators/, plugins/) and the sandbox are outside the rule;
data literals are listed by name.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "airflow_provider_skyshare"
OUTSIDE = ("sandbox", "operators", "plugins")
DATA_LITERALS = {"__init__.py:get_provider_info"}
LIMIT = 40


def long_functions() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in OUTSIDE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > LIMIT and f"{rel}:{node.name}" not in DATA_LITERALS:
                    found.append(f"{rel}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_runtime_function_is_longer_than_a_screen():
    offenders = long_functions()
    assert not offenders, ("split these so they read top to bottom in one screen (issue 15): "
                           + "; ".join(offenders))


def test_the_rule_sees_the_package():
    assert (PACKAGE / "follow.py").exists()
    assert len(list(PACKAGE.rglob("*.py"))) > 20
