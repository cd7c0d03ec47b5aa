"""The fleet file, or the Airflow Variable holding it: read once per change, validated by
``fleet.parse``.

The one place the fleet is read (the pure ``fleet`` module only validates): from disk
(``[skyshare] fleet_file``) or from an Airflow Variable (``[skyshare] fleet_variable``, and so
from the secrets backend). DAG parsing asks for the fleet of every task, so a file is parsed
again only when its mtime changes, a Variable only when its text does.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable

import yaml

from airflow_provider_skyshare.fleet import Fleet, FleetError, parse

_cache: dict[str, tuple[tuple[int, int], Fleet]] = {}
_lock = threading.Lock()


def load(path: str | os.PathLike[str]) -> Fleet:
    """Read and validate a fleet YAML file."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as fh:
            text = fh.read()
    except UnicodeDecodeError as exc:
        raise FleetError(source, "(file)", f"is not UTF-8 text ({exc.reason} at byte {exc.start})",
                         "save the fleet file as UTF-8") from None
    except FileNotFoundError:
        raise FleetError(source, "(file)", "file not found",
                         "pass fleet_file=... or set [skyshare] fleet_file "
                         "(AIRFLOW__SKYSHARE__FLEET_FILE) to an existing fleet YAML") from None
    except OSError as exc:
        raise FleetError(source, "(file)", f"cannot be read ({exc.strerror})",
                         "check the path and its permissions") from None
    return parse_text(text, source)


def parse_text(text: str, source: str) -> Fleet:
    """Validate a fleet's YAML (or JSON, which is YAML) text; errors name `source`."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(yaml)"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise FleetError(source, where, f"YAML syntax error: {problem}",
                         "correct the YAML at that position") from None
    return parse(data, source=source)


def configured(value: str | None) -> list[str]:
    """The fleet files of ``[skyshare] fleet_file``: comma-separated, the first the default."""
    return [os.path.abspath(os.path.expanduser(p.strip())) for p in (value or "").split(",")
            if p.strip()]


def cached(path: str) -> Fleet:
    """``load``, once per change of the file (DAG parsing calls this for every task)."""
    path = os.path.abspath(os.path.expanduser(path))
    try:
        stat = os.stat(path)
    except OSError:
        return load(path)  # raises the clear "file not found" FleetError
    version = (stat.st_mtime_ns, stat.st_size)  # an edit within the clock's tick changes size
    with _lock:
        found = _cache.get(path)
        if found and found[0] == version:
            return found[1]
    fleet = load(path)
    with _lock:
        _cache[path] = (version, fleet)
    return fleet


_variables: dict[str, tuple[str, Fleet]] = {}


def variable_source(name: str) -> str:
    return f"Airflow Variable {name!r}"


def from_variable(name: str, fetch: Callable[[str], str | None] | None = None) -> Fleet:
    """The fleet in the Airflow Variable `name` (YAML or JSON), parsed again only when its
    text changes. `fetch(name)` gives the text or None (default: Airflow's Variable.get,
    which asks the secrets backends: environment, metastore, or the configured one)."""
    text = (fetch or _airflow_variable)(name)
    source = variable_source(name)
    if text is None:
        raise FleetError(source, "(variable)", "not found",
                         f"set the Variable {name} to the fleet's YAML (`airflow variables set "
                         f"{name} \"$(cat fleet.yaml)\"`, AIRFLOW_VAR_{name.upper()}, or the "
                         "secrets backend), or set [skyshare] fleet_variable "
                         "(AIRFLOW__SKYSHARE__FLEET_VARIABLE) to the Variable that holds it")
    if not isinstance(text, str):
        raise FleetError(source, "(variable)", f"expected text, got {type(text).__name__}",
                         "store the fleet's YAML or JSON as the Variable's text")
    with _lock:
        found = _variables.get(name)
        if found and found[0] == text:
            return found[1]
    fleet = parse_text(text, source)
    with _lock:
        _variables[name] = (text, fleet)
    return fleet


def _airflow_variable(name: str) -> str | None:
    """Through the Task SDK where Airflow runs our code (a task, DAG parsing: its supervisor
    answers), else through Airflow's own backends (API server, CLI: the metastore too)."""
    runner = sys.modules.get("airflow.sdk.execution_time.task_runner")
    if getattr(runner, "SUPERVISOR_COMMS", None) is not None:
        from airflow.sdk import Variable

        return Variable.get(name, default=None)
    from airflow.models import Variable as StoredVariable

    return StoredVariable.get(name, default_var=None)


def configured_variable(value: str | None) -> str | None:
    """``[skyshare] fleet_variable``: the Variable holding the platform's default fleet."""
    return (value or "").strip() or None
