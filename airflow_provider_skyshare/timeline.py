"""One timeline per task: every attempt, on which cluster, and how it ended.

Pure and JSON round-trippable: it travels in trigger kwargs, trigger events, pod
annotations (so a restarted trigger can rebuild it from the cluster) and XCom.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from typing import Any

from airflow_provider_skyshare.names import Kind

_MOVES = frozenset(k.value for k in Kind if k.moves)  # (strings: a newer writer may add kinds)


def epoch(stamp: Any) -> float | None:
    """Seconds since the epoch from a Kubernetes timestamp ("2026-11-22T16:28:41Z"), or None."""
    if not isinstance(stamp, str) or not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True)
class Attempt:
    number: int
    cluster: str
    tier: str
    pod: str
    namespace: str
    placed_at: float
    why: str = ""  # the placement decision in one line
    started_at: float | None = None
    ended_at: float | None = None
    outcome: str = ""  # outcomes.Kind value once known
    reason: str = ""
    message: str = ""
    preempted_by: str = ""
    exit_code: int | None = None
    # a gang (nodes=N): every member's pod, the leader (``pod``) first; () for one pod
    members: tuple[str, ...] = ()

    @property
    def finished(self) -> bool:
        return self.ended_at is not None


@dataclass(frozen=True)
class Timeline:
    attempts: tuple[Attempt, ...] = field(default_factory=tuple)

    @property
    def last(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    @property
    def next_number(self) -> int:
        return self.attempts[-1].number + 1 if self.attempts else 1

    @property
    def preemptions(self) -> int:
        return sum(1 for a in self.attempts if a.outcome == Kind.PREEMPTED.value)

    @property
    def moves(self) -> int:
        """Attempts that ended without the job's own verdict (preempted or lost)."""
        return sum(1 for a in self.attempts if a.outcome in _MOVES)

    def add(self, attempt: Attempt) -> Timeline:
        return Timeline((*self.attempts, attempt))

    def update_last(self, **changes: Any) -> Timeline:
        if not self.attempts:
            raise ValueError("the timeline has no attempt to update")
        return Timeline((*self.attempts[:-1], replace(self.attempts[-1], **changes)))

    def to_list(self) -> list[dict[str, Any]]:
        # JSON-native (a tuple reached Airflow's XCom API as a string); a single pod's
        # attempt is written as before gangs existed
        return [{k: list(v) if k == "members" else v for k, v in asdict(a).items()
                 if k != "members" or v} for a in self.attempts]

    @classmethod
    def from_list(cls, items: list[dict[str, Any]] | None) -> Timeline:
        # Ignore keys this version does not know: a newer provider may have written the
        # history annotation of a pod we adopt.
        known = {f.name for f in fields(Attempt)}
        return cls(tuple(Attempt(**{k: _members(v) if k == "members" else v
                                    for k, v in a.items() if k in known})
                         for a in items or []))

    def to_json(self) -> str:
        return json.dumps(self.to_list(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> Timeline:
        return cls.from_list(json.loads(text) if text else [])

    def table(self) -> str:
        return format_table(self.rows(), HEADERS)

    def rows(self) -> list[list[str]]:
        return [
            [str(a.number), a.cluster, a.tier, _pods(a), _ts(a.placed_at), _ts(a.started_at),
             _ts(a.ended_at), a.outcome or "running", a.preempted_by or a.reason]
            for a in self.attempts
        ]


HEADERS = ["#", "cluster", "tier", "pod", "queued", "start", "end", "outcome", "preempted by / reason"]


def _pods(attempt: Attempt) -> str:
    """The pod, or a gang's members (the leader first)."""
    if not attempt.members:
        return attempt.pod
    return f"{len(attempt.members)} pods: {', '.join(attempt.members)}"


def _ts(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(value, tz=timezone.utc).strftime("%H:%M:%S.%f")[:-4]


def format_table(rows: list[list[str]], headers: list[str]) -> str:
    """A plain aligned text table (for logs and the CLI)."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(str(cell))) for w, cell in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def _members(value: Any) -> tuple[str, ...]:
    """A gang's member names as stored: a list of names (anything else is no list of them)."""
    return tuple(str(v) for v in value) if isinstance(value, (list, tuple)) else ()
