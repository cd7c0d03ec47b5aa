"""Pictures of the views, as inline SVG the UI plugin serves: a task's timeline (one lane per
cluster, one bar per attempt) and the fleet (per cluster, the GPUs its owner uses, lends and
has free, and what is queued).

Pure: a view model in, SVG text out, no JavaScript and no library. Pod, DAG and org names
come from users, so every string is escaped. Colour never carries a meaning alone: each
outcome and each kind of GPU use also has its own fill pattern and a text label, and every
bar has a `<title>` (a tooltip, and what a screen reader says).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from itertools import pairwise
from typing import Any

from airflow_provider_skyshare.names import Kind
from airflow_provider_skyshare.timeline import Attempt, Timeline

# ARIA's graphics roles (a chart, and its marks: each named by its <title>), with fallbacks
SYMBOL = "graphics-symbol img"
FONT = "font-family=\"system-ui,sans-serif\" font-size=\"12\""
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def esc(value: object, limit: int | None = None) -> str:
    """Text safe inside SVG/HTML text and attributes; cut to `limit` characters (with …)."""
    text = _CONTROL.sub("", str(value))
    if limit is not None and len(text) > limit:
        text = text[:limit - 1] + "…"
    return html.escape(text, quote=True)


@dataclass(frozen=True)
class Style:
    """How a kind of bar looks: a colour, and a pattern drawn over it (none: solid)."""

    colour: str
    pattern: str = ""  # stripes | hatch | dots | rows | columns | "" (solid)


# Okabe-Ito colours (told apart with the common colour-vision deficiencies); the patterns
# tell them apart in grey too.
OUTCOME_STYLES: dict[Kind, Style] = {
    Kind.SUCCEEDED: Style("#009E73"),
    Kind.FAILED: Style("#D55E00", "hatch"),
    Kind.PREEMPTED: Style("#E69F00", "stripes"),
    Kind.LOST: Style("#CC79A7", "dots"),
    Kind.MOVED: Style("#56B4E9", "rows"),
    Kind.RUNNING: Style("#0072B2"),
    Kind.PENDING: Style("#999999", "columns"),
}
UNKNOWN_STYLE = Style("#777777", "hatch")  # an outcome a newer provider wrote


def _pattern(pid: str, style: Style) -> str:
    """A fill: the colour, with the style's pattern in white over it."""
    marks = {
        "stripes": '<path d="M0 0V8" stroke="#fff" stroke-width="3" stroke-opacity=".7"/>',
        "hatch": '<path d="M0 0V8M0 0H8" stroke="#fff" stroke-width="2" stroke-opacity=".8"/>',
        "dots": '<circle cx="4" cy="4" r="1.6" fill="#fff" fill-opacity=".85"/>',
        "rows": '<path d="M0 2H8" stroke="#fff" stroke-width="2" stroke-opacity=".7"/>',
        "columns": '<path d="M2 0V8" stroke="#fff" stroke-width="2" stroke-opacity=".7"/>',
    }[style.pattern]
    turn = ' patternTransform="rotate(45)"' if style.pattern in ("stripes", "hatch") else ""
    return (f'<pattern id="{pid}" width="8" height="8" patternUnits="userSpaceOnUse"{turn}>'
            f'<rect width="8" height="8" fill="{style.colour}"/>{marks}</pattern>')


def _fill(pid: str, style: Style) -> str:
    return f"url(#{pid})" if style.pattern else style.colour


def _svg(width: int, height: int, title: str, desc: str, defs: Iterable[str],
         body: Iterable[str], cls: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="{cls}" role="graphics-document document" '
            f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'aria-labelledby="{cls}-title {cls}-desc" {FONT}>'
            f'<title id="{cls}-title">{esc(title)}</title><desc id="{cls}-desc">{esc(desc)}</desc>'
            f'<defs>{"".join(defs)}</defs>{"".join(body)}</svg>')


def _swatch(x: float, y: float, fill: str, label: str) -> str:
    return (f'<rect x="{x:.1f}" y="{y - 10:.1f}" width="14" height="12" fill="{fill}" '
            f'stroke="#555" stroke-width=".5"/><text x="{x + 18:.1f}" y="{y:.1f}">'
            f"{esc(label)}</text>")


def _legend(items: list[tuple[str, str]], x: float, y: float) -> list[str]:
    """Swatches with their labels in one row, each as wide as its label needs."""
    out = []
    for fill, label in items:
        out.append(_swatch(x, y, fill, label))
        x += 26 + 7 * len(label)
    return out


# ---- the timeline -------------------------------------------------------------------------

T_WIDTH, T_LABELS, T_RIGHT = 960, 110, 24
LANE, BAR_TOP, BAR_HEIGHT = 62, 22, 20
T_TOP, T_AXIS = 34, 34
NICE_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400)


def kind_of(attempt: Attempt) -> Kind | None:
    """The attempt's outcome; one not ended yet is Running once started, else Pending.
    None for an outcome this version does not know."""
    if not attempt.outcome:
        return Kind.RUNNING if attempt.started_at is not None else Kind.PENDING
    try:
        return Kind(attempt.outcome)
    except ValueError:
        return None


def preemptor(preempted_by: str) -> str:
    """Who took the GPUs, short: 'bair_user/abbeel' of 'bair_user/abbeel/<run> via kueue
    (...)'; what did it ('kueue (...)') when the preemptor was not named."""
    who, via, _how = preempted_by.partition(" via ")
    if not via:
        return preempted_by
    task_and_run = who.count("/") >= 2 and not who.startswith("pod ")  # dag/task/run
    return who.rsplit("/", 1)[0] if task_and_run else who


def tick_step(span: float, most: int = 8) -> int:
    """Seconds between axis ticks: the smallest round step giving at most `most` ticks."""
    return next((s for s in NICE_STEPS if span / s <= most), NICE_STEPS[-1])


@dataclass(frozen=True)
class TimeScale:
    """Seconds since the epoch to x pixels."""

    start: float
    end: float
    left: float
    right: float

    def x(self, t: float) -> float:
        span = max(self.end - self.start, 1e-9)
        return self.left + (t - self.start) / span * (self.right - self.left)


def _end(a: Attempt, until: float) -> float:
    return max(a.ended_at if a.ended_at is not None else until, a.placed_at)


def time_scale(timeline: Timeline, now: float | None) -> TimeScale:
    """From the first placement to the last end (or `now`, while an attempt runs)."""
    times = [t for a in timeline.attempts for t in (a.placed_at, a.started_at, a.ended_at)
             if t is not None]
    running = any(a.ended_at is None for a in timeline.attempts)
    if running and now is not None:
        times.append(now)
    start, end = min(times), max(times)
    return TimeScale(start, max(end, start + 1.0), T_LABELS, T_WIDTH - T_RIGHT)


def _clock(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%H:%M:%S")


def _axis(scale: TimeScale, bottom: float) -> list[str]:
    """Seconds since the first placement, with a grid line per tick."""
    step = tick_step(scale.end - scale.start)
    out = [f'<line x1="{scale.left}" y1="{bottom}" x2="{scale.right}" y2="{bottom}" '
           'stroke="#555"/>']
    for i in range(int((scale.end - scale.start) // step) + 1):
        x = scale.x(scale.start + i * step)
        out.append(f'<line x1="{x:.1f}" y1="{T_TOP}" x2="{x:.1f}" y2="{bottom + 4}" '
                   f'stroke="#ddd"/><text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">'
                   f"+{i * step} s</text>")
    out.append(f'<text x="{scale.right}" y="{bottom + 30}" text-anchor="end" fill="#555">'
               f"seconds since the first placement at {_clock(scale.start)} UTC</text>")
    return out


def _lanes(clusters: list[str]) -> list[str]:
    out = []
    for i, cluster in enumerate(clusters):
        y = T_TOP + i * LANE
        shade = ' fill="#f6f8f6"' if i % 2 == 0 else ' fill="#fff"'
        out.append(f'<g class="lane" data-cluster="{esc(cluster)}"><rect x="0" y="{y}" '
                   f'width="{T_WIDTH}" height="{LANE}"{shade}/><text x="8" y="{y + BAR_TOP + 14}" '
                   f'font-weight="600">{esc(cluster, 16)}</text></g>')
    return out


def _attempt_title(a: Attempt, kind: Kind | None, end: float) -> str:
    outcome = kind.value if kind else a.outcome
    started = f"started {_clock(a.started_at)}" if a.started_at is not None else "never started"
    lines = [f"attempt {a.number} on {a.cluster} as {a.tier}: {outcome}",
             f"pod {a.namespace}/{a.pod}",
             f"placed {_clock(a.placed_at)}, {started}, "
             + (f"ended {_clock(end)}" if a.ended_at is not None else "not ended"),
             f"placement: {a.why}" if a.why else "",
             f"preempted by {a.preempted_by}" if a.preempted_by else "",
             f"{a.reason}: {a.message}" if a.reason and not a.preempted_by else ""]
    return "\n".join(line for line in lines if line)


def _bar(a: Attempt, lane: int, scale: TimeScale, until: float) -> str:
    """The attempt from placed to end in its outcome's fill: thin while queued (placed, not
    yet started), full height while it ran; '#n outcome' under it."""
    kind = kind_of(a)
    end = _end(a, until)
    name = kind.value if kind else a.outcome
    fill = (_fill(f"tl-{kind.value}", OUTCOME_STYLES[kind]) if kind
            else _fill("tl-unknown", UNKNOWN_STYLE))
    x0, x1 = scale.x(a.placed_at), max(scale.x(end), scale.x(a.placed_at) + 2.0)
    xs = x1 if a.started_at is None else min(max(scale.x(a.started_at), x0), x1)
    y = T_TOP + lane * LANE + BAR_TOP
    rect = '<rect class="{}" x="{:.1f}" y="{:.1f}" width="{:.1f}" height="{:.1f}" fill="{}" ' \
        'stroke="#333" stroke-width=".6"/>'
    queued = rect.format("queued", x0, y + BAR_HEIGHT / 4, xs - x0, BAR_HEIGHT / 2, fill)
    ran = rect.format("ran", xs, y, x1 - xs, BAR_HEIGHT, fill)
    return (f'<g class="attempt" role="{SYMBOL}" data-number="{esc(a.number)}" '
            f'data-cluster="{esc(a.cluster)}" '
            f'data-outcome="{esc(name)}" data-x="{x0:.1f}" data-width="{x1 - x0:.1f}">'
            f"<title>{esc(_attempt_title(a, kind, end))}</title>"
            f'{queued if xs > x0 else ""}{ran if x1 > xs else ""}'
            f'<text x="{x0:.1f}" y="{y + BAR_HEIGHT + 14}">{esc(f"#{a.number} {name}", 28)}'
            "</text></g>")


def _preemption(a: Attempt, lane: int, scale: TimeScale, until: float) -> str:
    """A red line where the attempt was preempted, with who did it above the bar."""
    x = scale.x(_end(a, until))
    top = T_TOP + lane * LANE
    right_half = x > (scale.left + scale.right) / 2
    anchor, tx = ("end", x - 5) if right_half else ("start", x + 5)
    who = preemptor(a.preempted_by)
    text = f"preempted by {who}" if who else "preempted"
    title = f"attempt {a.number} preempted by {a.preempted_by or '?'}"
    return (f'<g class="preemption" role="{SYMBOL}" data-number="{esc(a.number)}" data-by="{esc(who)}">'
            f"<title>{esc(title)}</title>"
            f'<line x1="{x:.1f}" y1="{top + 4}" x2="{x:.1f}" y2="{top + LANE - 4}" '
            f'stroke="#B00020" stroke-width="2.5"/>'
            f'<path d="M{x - 5:.1f} {top + 4}h10l-5 7z" fill="#B00020"/>'
            f'<text x="{tx:.1f}" y="{top + 15}" text-anchor="{anchor}" fill="#B00020" '
            f'font-weight="600">{esc(text, 60)}</text></g>')


def _move(a: Attempt, b: Attempt, lanes: dict[str, int], scale: TimeScale, until: float) -> str:
    """A dashed arrow from where an attempt ended to where the next one was placed."""
    mid = T_TOP + BAR_TOP + BAR_HEIGHT / 2
    y0, y1 = mid + lanes[a.cluster] * LANE, mid + lanes[b.cluster] * LANE
    x0, x1 = scale.x(_end(a, until)), scale.x(b.placed_at)
    return (f'<path class="move" d="M{x0:.1f} {y0:.1f}L{max(x1, x0 + 1):.1f} {y1:.1f}" '
            'stroke="#333" stroke-dasharray="4 3" fill="none" marker-end="url(#tl-arrow)"/>')


def _timeline_legend(kinds: set[Kind | None]) -> list[str]:
    items = [(_fill(f"tl-{k.value}", s), k.value) for k, s in OUTCOME_STYLES.items() if k in kinds]
    if None in kinds:
        items.append((_fill("tl-unknown", UNKNOWN_STYLE), "other"))
    key = "thin: queued, not yet started · red line: preempted · dashed arrow: moved"
    return [*_legend(items, T_LABELS, 18),
            f'<text x="{T_WIDTH - T_RIGHT}" y="18" text-anchor="end" fill="#555">{key}</text>']


def _timeline_defs() -> list[str]:
    defs = [_pattern(f"tl-{k.value}", s) for k, s in OUTCOME_STYLES.items() if s.pattern]
    defs.append(_pattern("tl-unknown", UNKNOWN_STYLE))
    defs.append('<marker id="tl-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
                'markerHeight="7" orient="auto-start-reverse"><path d="M0 0L10 5L0 10z" '
                'fill="#333"/></marker>')
    return defs


def timeline_svg(timeline: Timeline, now: float | None = None) -> str:
    """The task's attempts on a time axis: a lane per cluster (in the order the task first
    went there), a bar per attempt from its placement to its end, coloured and patterned by
    outcome, preemptions marked with the preemptor, dashed arrows for the moves. An attempt
    not ended yet runs to `now` (else to the last known time). '' for no attempts."""
    if not timeline.attempts:
        return ""
    clusters = list(dict.fromkeys(a.cluster for a in timeline.attempts))
    lanes = {c: i for i, c in enumerate(clusters)}
    scale = time_scale(timeline, now)
    bottom = T_TOP + len(clusters) * LANE
    body = [*_timeline_legend({kind_of(a) for a in timeline.attempts}),
            *_lanes(clusters), *_axis(scale, bottom)]
    body += [_move(a, b, lanes, scale, scale.end) for a, b in pairwise(timeline.attempts)]
    body += [_bar(a, lanes[a.cluster], scale, scale.end) for a in timeline.attempts]
    body += [_preemption(a, lanes[a.cluster], scale, scale.end) for a in timeline.attempts
             if a.outcome == Kind.PREEMPTED.value]
    n, moves = len(timeline.attempts), timeline.moves
    desc = (f"{n} attempt{'s' * (n != 1)} on {', '.join(clusters)}; {timeline.preemptions} "
            f"preempted, {moves} moved by the provider. The table below lists them.")
    return _svg(T_WIDTH, bottom + T_AXIS + 8, "Timeline of the task's attempts", desc,
                _timeline_defs(), body, "skyshare-timeline")


# ---- the fleet ----------------------------------------------------------------------------

F_WIDTH, F_LABELS, F_BARS, F_GAP = 960, 190, 470, 36
F_ROW, F_BAR, F_TOP = 58, 24, 34
F_QUEUE = F_WIDTH - F_LABELS - F_BARS - F_GAP - 16


class Use(str, Enum):
    """What a cluster's GPUs are doing, in the order the bar stacks them."""

    OWNER = "owner uses"
    LENT = "lent"
    OTHER = "other work"
    FREE = "free"
    QUEUED = "queued"


USE_STYLES: dict[Use, Style] = {
    Use.OWNER: Style("#0072B2"),
    Use.LENT: Style("#E69F00", "stripes"),
    Use.OTHER: Style("#999999", "dots"),
    Use.FREE: Style("#FFFFFF"),
    Use.QUEUED: Style("#CC79A7", "hatch"),
}


@dataclass(frozen=True)
class Segment:
    use: Use
    gpus: int
    label: str  # what the segment says in its title, e.g. "2 lent to rise"


def segments(row: dict[str, Any]) -> list[Segment]:
    """One fleet_rows row as the bar's stacked parts: owner use, lent (one per borrowing
    org), other work (any use nobody is named for included), free."""
    lent = [Segment(Use.LENT, n, f"{n} lent to {org}") for org, n in sorted(row["lent"].items())]
    named = row["owner_use"] + sum(s.gpus for s in lent) + row["other_use"]
    other = row["other_use"] + max(0, row["total"] - row["free"] - named)
    parts = [Segment(Use.OWNER, row["owner_use"], f"{row['owner_use']} used by the owner "
                     f"{row['owner']}"), *lent,
             Segment(Use.OTHER, other, f"{other} used by other work"),
             Segment(Use.FREE, row["free"], f"{row['free']} free")]
    return [s for s in parts if s.gpus > 0]


def _segment(s: Segment, x: float, y: float, w: float, what: str) -> str:
    style = USE_STYLES[s.use]
    text = s.label if s.use is Use.LENT else f"{s.gpus} {s.use.value}"
    fits = 7 * len(text) + 8 <= w
    dark = s.use in (Use.OWNER,)
    return (f'<g class="segment" role="{SYMBOL}" data-use="{s.use.name.lower()}" data-gpus="{s.gpus}" '
            f'data-width="{w:.1f}"><title>{esc(f"{what}: {s.label}")}</title>'
            f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{F_BAR}" '
            f'fill="{_fill("fl-" + s.use.name.lower(), style)}" stroke="#333" stroke-width=".6"/>'
            + (f'<text x="{x + w / 2:.1f}" y="{y + 16}" text-anchor="middle" '
               f'fill="{"#fff" if dark else "#111"}" font-weight="600" '
               f'paint-order="stroke" stroke="{"#0072B2" if dark else "#fff"}" stroke-width="3">'
               f"{esc(text)}</text>" if fits else "") + "</g>")


def _queued(row: dict[str, Any], y: float, per_gpu: float, what: str) -> str:
    """Queued GPUs beside the bar: a bar on the same scale (cut at the column), and who."""
    n = sum(row["queued"].values())
    x = F_LABELS + F_BARS + F_GAP
    if not n:
        return f'<text class="queued" x="{x}" y="{y + 16}" fill="#555">none queued</text>'
    who = ", ".join(f"{k} {v}" for k, v in sorted(row["queued"].items()))
    w = min(n * per_gpu, F_QUEUE)
    fill = _fill("fl-queued", USE_STYLES[Use.QUEUED])
    return (f'<g class="queued" role="{SYMBOL}" data-gpus="{n}"><title>{esc(f"{what}: {n} queued ({who})")}'
            f'</title><rect x="{x}" y="{y}" width="{w:.1f}" height="{F_BAR}" fill="{fill}" '
            f'stroke="#333" stroke-width=".6"/><text x="{x}" y="{y + F_BAR + 14}">'
            f"{esc(f'{n} queued: {who}', 40)}</text></g>")


def _fleet_row(row: dict[str, Any], i: int, per_gpu: float) -> str:
    y = F_TOP + i * F_ROW + 8
    what, cluster = f"{row['cluster']} {row['product']}", esc(row["cluster"])
    owner, error = f"owner {row['owner']}", f"unreachable: {row['error']}"
    head = (f'<text x="8" y="{y + 10}" font-weight="600">{esc(what, 26)}</text>'
            f'<text x="8" y="{y + 26}" fill="#555">{esc(owner, 28)}</text>')
    if not row["reachable"]:
        return (f'<g class="cluster" role="{SYMBOL}" data-cluster="{cluster}" data-reachable="no">'
                f"<title>{esc(f'{what}: {error}')}</title>{head}"
                f'<rect x="{F_LABELS}" y="{y}" width="{F_BARS}" height="{F_BAR}" fill="none" '
                f'stroke="#B00020" stroke-dasharray="5 3"/><text x="{F_LABELS + 8}" y="{y + 16}" '
                f'fill="#B00020">{esc(error, 64)}</text></g>')
    x, parts = float(F_LABELS), []
    for s in segments(row):
        parts.append(_segment(s, x, y, s.gpus * per_gpu, what))
        x += s.gpus * per_gpu
    total = f'<text x="{F_LABELS}" y="{y + F_BAR + 14}" fill="#555">{row["total"]:d} GPUs</text>'
    return (f'<g class="cluster" data-cluster="{cluster}" data-reachable="yes">'
            f'{head}{"".join(parts)}{total}{_queued(row, y, per_gpu, what)}</g>')


def fleet_svg(rows: list[dict[str, Any]]) -> str:
    """views.fleet_rows as a bar per cluster and GPU product, all on one scale: the GPUs its
    owner uses, lends (one part per borrowing org) and has free, and beside it the GPUs
    queued for it. '' for no rows."""
    if not rows:
        return ""
    widest = max([r["total"] for r in rows if r["reachable"]] + [1])
    per_gpu = F_BARS / widest
    items = [(_fill(f"fl-{u.name.lower()}", s), u.value) for u, s in USE_STYLES.items()]
    body = [*_legend(items, F_LABELS, 18),
            f'<text x="{F_LABELS + F_BARS + F_GAP}" y="{F_TOP + 2}" fill="#555">queued</text>']
    body += [_fleet_row(r, i, per_gpu) for i, r in enumerate(rows)]
    defs = [_pattern(f"fl-{u.name.lower()}", s) for u, s in USE_STYLES.items() if s.pattern]
    lent = sum(sum(r["lent"].values()) for r in rows if r["reachable"])
    desc = (f"{len(rows)} cluster GPU pools; {lent} GPUs lent to other orgs. "
            "The table below lists the numbers.")
    return _svg(F_WIDTH, F_TOP + len(rows) * F_ROW + 16, "GPUs per cluster", desc, defs, body,
                "skyshare-fleet")
