"""Where the platform keeps its fleet, and the fleet a deferred task names.

The fleet comes from the platform's configuration: ``[skyshare] fleet_variable`` (an Airflow
Variable) or one of the files in ``[skyshare] fleet_file``; a task may pick one of those files,
never a fleet of its own. A deferred task's trigger row names its fleet (source and digest)
instead of carrying it: the whole fleet was 54 % of the row for the seed's two clusters and
90 % for twenty (benchmark (h)), in every deferred task's row. The triggerer reads the fleet
again from that source, under the same rule as the worker, so a trigger row cannot point the
follower at a fleet of the DAG's making either.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from airflow.sdk import conf

from airflow_provider_skyshare import fleetfile
from airflow_provider_skyshare.fleet import Fleet, FleetError, parse


def configured_fleet_files() -> list[str]:
    """``[skyshare] fleet_file``: the platform's fleet(s), comma-separated; the first is the
    default. A task may pick one of them (``fleet_file=``), never a file of its own."""
    return fleetfile.configured(conf.get("skyshare", "fleet_file", fallback=None))


def default_fleet_file() -> str | None:
    return next(iter(configured_fleet_files()), None)


def fleet_variable() -> str | None:
    """``[skyshare] fleet_variable``: the Airflow Variable holding the platform's default
    fleet (so the secrets backend can hold it); it wins over the first fleet file."""
    return fleetfile.configured_variable(conf.get("skyshare", "fleet_variable", fallback=None))


def platform_fleet(requested: str | None) -> Fleet:
    """The fleet a task uses: the Variable's unless the task names one of the fleet files."""
    variable = fleet_variable()
    if variable and not requested:
        return recent_variable(variable)
    return fleetfile.cached(fleet_path(requested))


# A triggerer restarted with thousands of deferred tasks reads each one's fleet, and a DAG file
# checks every task's request against it: the Variable is fetched (a secrets backend, or an
# API call through the supervisor) at most this often per process, not once per task.
VARIABLE_TTL_SECONDS = 30.0
_recent: dict[str, tuple[float, Fleet]] = {}
_recent_lock = threading.Lock()
_clock = time.monotonic  # replaceable in tests


def recent_variable(name: str) -> Fleet:
    """The fleet of the Airflow Variable `name`, as read at most VARIABLE_TTL_SECONDS ago."""
    with _recent_lock:  # one fetch for the triggers that start together
        found = _recent.get(name)
        now = _clock()
        if found is None or now - found[0] >= VARIABLE_TTL_SECONDS:
            found = _recent[name] = (now, fleetfile.from_variable(name))
        return found[1]


def fleet_path(requested: str | None) -> str:
    """The fleet file a task uses: the configured one it names (or the first), else, where
    Airflow configures none (development), its own."""
    configured = configured_fleet_files()
    if not configured and fleet_variable() and requested:
        raise FleetError(requested, "fleet_file", "is not a fleet this Airflow is configured "
                         f"with (the Airflow Variable {fleet_variable()!r})",
                         "drop fleet_file= (the fleet comes from [skyshare] fleet_variable), or "
                         "have the platform team add the file to [skyshare] fleet_file")
    if not configured:
        if not requested:
            raise FleetError("(no fleet file)", "fleet_file", "no fleet file configured",
                             "set [skyshare] fleet_file (AIRFLOW__SKYSHARE__FLEET_FILE) or "
                             "[skyshare] fleet_variable (AIRFLOW__SKYSHARE__FLEET_VARIABLE)")
        return requested
    if not requested:
        return configured[0]
    path = os.path.abspath(os.path.expanduser(requested))
    if path not in configured:
        raise FleetError(requested, "fleet_file", "is not a fleet file this Airflow is "
                         f"configured with ({', '.join(configured)})",
                         "drop fleet_file= (the fleet comes from [skyshare] fleet_file), or "
                         "have the platform team add the file there")
    return path


def fleet_at(source: str) -> Fleet:
    """The fleet a saved task names, read again where the platform keeps it: the Variable
    or a configured file (or, where Airflow configures none, the task's own file)."""
    variable = fleet_variable()
    if variable and source == fleetfile.variable_source(variable):
        return recent_variable(variable)
    configured = configured_fleet_files()
    if source in configured or (not (configured or variable) and os.path.isabs(source)):
        return fleetfile.cached(source)
    where = ", ".join([*(fleetfile.variable_source(v) for v in [variable] if v), *configured])
    raise FleetError(source, "(deferred task)", "is not a fleet this process is configured "
                     f"with ({where})", "give the triggerer the workers' [skyshare] "
                     "fleet_file and fleet_variable")


@dataclass(frozen=True)
class Saved:
    """The fleet of a saved task state, and whether it changed since the task was placed."""

    fleet: Fleet
    changed: bool

    def note(self) -> str:
        return (f"the fleet {self.fleet.source} changed since this task was placed: following "
                "and moving it by the current one")


def saved_fleet(state: dict[str, Any]) -> Saved:
    """``state["fleet"]``: a reference ({source, digest}), or the whole fleet in a trigger row
    written before references (its ``fleet_source`` is read again: an upgrade strands no
    deferred task, and no row brings a fleet of its own)."""
    saved = state["fleet"]
    if "clusters" in saved:  # the platform's fleet still decides, not the row's copy of it
        source, digest = state.get("fleet_source", "<fleet>"), parse(saved).digest
    else:
        source, digest = saved["source"], saved["digest"]
    fleet = fleet_at(source)
    return Saved(fleet, fleet.digest != digest)
