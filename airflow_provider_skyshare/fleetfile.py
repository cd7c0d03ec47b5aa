"""The fleet file: read once per change, validated by ``fleet.parse``.

The one place the fleet is read from disk (the pure ``fleet`` module only validates). DAG
parsing asks for the fleet of every task, so a file is parsed again only when its mtime
changes.
"""

from __future__ import annotations

import os
import threading

import yaml

from airflow_provider_skyshare.fleet import Fleet, FleetError, parse

_cache: dict[str, tuple[float, Fleet]] = {}
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
        mtime = os.stat(path).st_mtime
    except OSError:
        return load(path)  # raises the clear "file not found" FleetError
    with _lock:
        found = _cache.get(path)
        if found and found[0] == mtime:
            return found[1]
    fleet = load(path)
    with _lock:
        _cache[path] = (mtime, fleet)
    return fleet
