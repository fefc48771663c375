"""``report``: one self-contained HTML page about a run, for people and for attaching to a
ticket: a timeline of its steps and their attempts, retries, the failure and its error, dead
letters, parameters, outputs with sizes, and the pipeline's recent runs as a small chart.

Self-contained means no network at all: inline CSS and SVG, system fonts, no script. Every
string that came from a user, a step or a server (names, errors, URLs, parameters) is
HTML-escaped, so a hostile error message shows as text and never runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from html import escape
from typing import TYPE_CHECKING, Any

from .._history import RunSummary, format_duration, list_runs
from .._records import is_name, parse_record
from .._reporting import resume_command
from .._retention import format_size
from ._status import item_summary

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._deadletter import DeadLetterStore
    from .._history import RunHistory
    from .._pipeline import Pipeline
    from ._status import StepStatus

__all__ = ["Attempt", "render_report", "write_report"]

HISTORY_RUNS = 30
_COLOURS = {
    "done": "#2e9d5b",
    "succeeded": "#2e9d5b",
    "failed": "#d64545",
    "interrupted": "#e8a33d",
    "running": "#3b7dd8",
    "unknown": "#9aa5b1",
}
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
background:#f5f7fa;color:#1f2933}
header{padding:18px 28px;background:#1f2933;color:#fff}
header h1{margin:0;font-size:20px;font-weight:600}
header .meta{margin-top:6px;color:#cbd2d9}
main{padding:8px 28px 28px;max-width:1200px}
section{background:#fff;border:1px solid #e4e7eb;border-radius:6px;margin:16px 0;padding:14px 18px}
h2{font-size:15px;margin:0 0 10px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #eef0f2;vertical-align:top}
th{font-weight:600;color:#52606d;font-size:12px;text-transform:uppercase}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:12px;
font-weight:600}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
pre{white-space:pre-wrap;word-break:break-word;background:#fff5f5;border:1px solid #f5c2c2;
padding:10px;border-radius:4px;margin:6px 0 0;font-size:13px}
#failure{border-color:#d64545;border-left-width:5px}
.muted{color:#7b8794}
code{font-size:13px;background:#eef0f2;padding:1px 4px;border-radius:3px}
svg text{font:12px system-ui,sans-serif;fill:#1f2933}
svg text.inside{fill:#fff}
.legend span{margin-right:14px}
.legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:4px}
"""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One start of a step in this run (a process running it), from the journal."""

    step: str
    runs: int
    started: str
    finished: str
    outcome: str
    attempts: int = 0
    retries: int = 0
    error: str = ""
    dead_letter_id: str = ""


def _moment(text: str) -> float | None:
    """Seconds since the epoch of an RFC 3339 UTC time stalwart wrote."""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def read_attempts(raw: bytes, *, live: bool) -> list[Attempt]:
    """Every start and end of a step in the run's journal (``raw``), paired into attempts, in
    order. A start without an end is ``running`` if ``live`` (the lock is held), else
    ``interrupted`` (the process died)."""
    attempts: dict[tuple[str, int], Attempt] = {}
    for line in raw.splitlines():
        try:
            data = json.loads(line.decode("utf-8"))
            step = data.pop("step", None) if isinstance(data, dict) else None
            record = parse_record(data)
        except (UnicodeDecodeError, ValueError, TypeError, RecursionError):
            continue
        if not is_name(step):
            continue
        key = (step, record.runs)
        error = f"{record.error_type}: {record.error}" if record.error_type else ""
        attempts[key] = Attempt(
            step=step,
            runs=record.runs,
            started=record.started or (attempts[key].started if key in attempts else ""),
            finished=record.finished,
            outcome=record.outcome,
            attempts=record.attempts,
            retries=record.retries,
            error=error,
            dead_letter_id=record.dead_letter_id,
        )
    result = []
    for attempt in attempts.values():
        if attempt.outcome == "running" and not live:
            attempt = Attempt(**{**_fields(attempt), "outcome": "interrupted"})  # noqa: PLW2901
        result.append(attempt)
    return sorted(result, key=lambda a: (a.started, a.step))


def _fields(attempt: Attempt) -> dict[str, Any]:
    return {name: getattr(attempt, name) for name in Attempt.__slots__}


def _badge(state: str) -> str:
    colour = _COLOURS.get(state, "#9aa5b1" if state not in ("stale", "corrupt") else "#8e44ad")
    return f'<span class="badge" style="background:{colour}">{escape(state)}</span>'


_CHAR_W = 7.0
"""How wide a character of the charts' 12px system-ui text is drawn at most, in px."""


def _label_place(
    x: float, w: float, label_w: float, left: float, full: float
) -> tuple[float, float, bool] | None:
    """Where a bar's label goes (its x extent, and whether it is drawn inside the bar): after
    the bar if it fits, else inside a bar wide enough, else before the bar; None if nowhere."""
    if x + w + 4 + label_w <= full:
        return x + w + 4, x + w + 4 + label_w, False
    if w >= label_w + 8:
        return x + 4, x + 4 + label_w, True
    if x - 4 - label_w >= left:
        return x - 4 - label_w, x - 4, False
    return None


def _timeline(attempts: Sequence[Attempt], steps: Sequence[str]) -> str:
    """A Gantt chart: a row per step, a bar per attempt, coloured by how it ended."""
    if not attempts:
        return '<p class="muted">No step has started in this run.</p>'
    rows = list(steps) + sorted({a.step for a in attempts} - set(steps))
    begin = min(m for a in attempts if (m := _moment(a.started)) is not None)
    ends = [_moment(a.finished or a.started) for a in attempts]
    end = max([m for m in ends if m is not None] + [begin])
    span = max(end - begin, 0.001)
    left, width, row_h = 150, 720, 30
    height = row_h * len(rows) + 34
    full = left + width + 30
    parts = [
        f'<svg id="timeline" role="img" aria-label="timeline of the steps" width="{full}"'
        f' height="{height}" viewBox="0 0 {full} {height}">'
    ]
    for index, step in enumerate(rows):
        y = index * row_h + 8
        if index % 2 == 0:
            parts.append(
                f'<rect x="0" y="{y - 4}" width="{full}" height="{row_h}" fill="#f7f9fb"/>'
            )
        parts.append(f'<text x="8" y="{y + 15}">{escape(step[:22])}</text>')
    labelled: dict[str, list[tuple[float, float]]] = {}  # per row: the labels' x extents
    for attempt in attempts:
        start = _moment(attempt.started)
        if start is None:
            continue
        stop = _moment(attempt.finished) or start
        x = left + (start - begin) / span * width
        w = max((stop - start) / span * width, 3)
        y = rows.index(attempt.step) * row_h + 8
        colour = _COLOURS.get(attempt.outcome, _COLOURS["unknown"])
        label = f"run {attempt.runs}" + (f", {attempt.retries} retries" if attempt.retries else "")
        tip = (
            f"{attempt.step} run {attempt.runs}: {attempt.outcome}, "
            f"{format_duration(max(stop - start, 0))}, {attempt.attempts} HTTP attempts, "
            f"{attempt.retries} retries" + (f"\n{attempt.error}" if attempt.error else "")
        )
        parts.append(
            f'<g class="attempt {escape(attempt.outcome)}"><title>{escape(tip)}</title>'
            f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="20" rx="3" fill="{colour}"/>'
        )
        text = _label_place(x, w, _CHAR_W * len(label), left, full)
        placed = labelled.setdefault(attempt.step, [])
        if text is not None and all(text[1] < a or text[0] > b for a, b in placed):
            placed.append((text[0], text[1]))  # never overprinted: a crowded bar keeps its tooltip
            inside = ' class="inside"' if text[2] else ""
            parts.append(f'<text x="{text[0]:.1f}" y="{y + 15}"{inside}>{escape(label)}</text>')
        parts.append("</g>")
    axis_y = height - 12
    parts.append(
        f'<line x1="{left}" y1="{axis_y - 8}" x2="{left + width}" y2="{axis_y - 8}" '
        'stroke="#9aa5b1"/>'
        f'<text x="{left}" y="{axis_y + 4}">0 s</text>'
        f'<text x="{left + width - 60}" y="{axis_y + 4}">{escape(format_duration(span))}</text>'
    )
    parts.append("</svg>")
    legend = "".join(
        f'<span><i style="background:{_COLOURS[k]}"></i>{k}</span>'
        for k in ("done", "failed", "interrupted", "running")
    )
    return "".join(parts) + f'<div class="legend muted">{legend}</div>'


def _history_chart(runs: Sequence[RunSummary], current: str) -> str:
    """The last runs' durations (bar heights) and outcomes (colours), oldest on the left."""
    if not runs:
        return '<p class="muted">No runs yet.</p>'
    ordered = list(reversed(runs))
    longest = max((r.duration_s or 0.0) for r in ordered) or 1.0
    bar, gap, chart_h = 22, 6, 120
    width = len(ordered) * (bar + gap) + 60
    parts = [
        f'<svg id="history" role="img" aria-label="recent runs" width="{width}" '
        f'height="{chart_h + 40}" viewBox="0 0 {width} {chart_h + 40}">'
    ]
    for index, run in enumerate(ordered):
        h = max((run.duration_s or 0.0) / longest * chart_h, 3)
        x = 50 + index * (bar + gap)
        colour = _COLOURS.get(run.state, _COLOURS["unknown"])
        outline = ' stroke="#1f2933" stroke-width="2"' if run.run_id == current else ""
        tip = f"{run.run_id}: {run.state}, {format_duration(run.duration_s) or 'no duration'}"
        if run.failed_step:
            tip += f", failed at {run.failed_step}"
        parts.append(
            f'<g class="run {escape(run.state)}"><title>{escape(tip)}</title>'
            f'<rect x="{x}" y="{chart_h - h + 10:.1f}" width="{bar}" height="{h:.1f}" '
            f'fill="{colour}"{outline}/></g>'
        )
    parts.append(
        f'<text x="0" y="18">{escape(format_duration(longest))}</text><text x="0" '
        f'y="{chart_h + 10}">0</text>'
        f'<text x="50" y="{chart_h + 30}">{escape(ordered[0].run_id)}</text>'
    )
    if len(ordered) > 1:
        parts.append(
            f'<text x="{width - 10}" y="{chart_h + 30}" text-anchor="end">'
            f"{escape(ordered[-1].run_id)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _marker_extras(
    history: RunHistory, run_id: str, steps: Sequence[str]
) -> tuple[dict[str, str], dict[str, str]]:
    """Parameters and map-step item counts recorded in markers, where markers carry them."""
    params: dict[str, str] = {}
    items: dict[str, str] = {}
    for step in steps:
        try:
            data = json.loads(history.marker(run_id, step) or b"null")
        except (ValueError, RecursionError):
            continue
        if not isinstance(data, dict):
            continue
        if isinstance(data.get("params"), dict):
            params.update({str(k): str(v) for k, v in data["params"].items()})
        counted = data.get("items")
        if isinstance(counted, dict):
            items[step] = ", ".join(f"{k} {v}" for k, v in counted.items())
        elif isinstance(counted, int):
            items[step] = str(counted)
    return params, items


def _steps_table(rows: Sequence[StepStatus], items: dict[str, str]) -> str:
    out = [
        "<table id=\"steps\"><tr><th>Step</th><th>State</th><th class='num'>Took</th>"
        "<th class='num'>Runs</th><th class='num'>HTTP attempts</th><th class='num'>Retries</th>"
        "<th>Outputs / error</th></tr>"
    ]
    for row in rows:
        if row.state == "done":
            detail = (
                "<br>".join(
                    f"<code>{escape(str(o['name']))}</code> {escape(format_size(int(o['size'])))}"
                    for o in row.outputs
                )
                or '<span class="muted">no outputs</span>'
            )
        else:
            detail = escape(row.error or row.note)
            if row.dead_letter_id:
                detail += f" [dead letter <code>{escape(row.dead_letter_id)}</code>]"
        if row.items is not None:  # a map step: its journal's counts
            detail += f'<br><span class="muted">{escape(item_summary(row.items))}</span>'
        elif row.step in items:
            detail += f'<br><span class="muted">items: {escape(items[row.step])}</span>'
        took = format_duration(row.duration_s)
        out.append(
            f"<tr><td>{escape(row.step)}</td><td>{_badge(row.state)}</td>"
            f"<td class='num'>{escape(took)}</td><td class='num'>{row.runs or ''}</td>"
            f"<td class='num'>{row.attempts or ''}</td>"
            f"<td class='num'>{row.retries if row.runs else ''}</td><td>{detail}</td></tr>"
        )
    out.append("</table>")
    return "".join(out)


def _dead_letters(store: DeadLetterStore, run_id: str) -> str:
    from .._errors import DeadLetterError, UsageError  # noqa: PLC0415

    rows = [e for e in store.list() if e.run_id == run_id]
    if not rows:
        return '<p class="muted">None.</p>'
    out = [
        '<table id="dead-letter-table"><tr><th>Id</th><th>Step</th><th>State</th>'
        "<th>Request</th><th>Reason</th></tr>"
    ]
    for row in rows:
        request = ""
        try:
            envelope = store.load(row.id)
            req = envelope.document.get("request")
            if isinstance(req, dict):
                request = f"{req.get('method', '')} {req.get('url', '')}"
            else:
                request = f"({envelope.kind or 'payload'})"
        except (DeadLetterError, UsageError):  # pragma: no cover - changed since it was listed
            request = "(unreadable)"
        out.append(
            f"<tr><td><code>{escape(row.id)}</code></td><td>{escape(row.step)}</td>"
            f"<td>{_badge(row.state)}</td><td>{escape(request)}</td>"
            f"<td>{escape(row.reason[:500])}</td></tr>"
        )
    out.append("</table>")
    return "".join(out)


def _resume(pipeline: Pipeline, run_id: str) -> str:
    """The resume command, as an alert of this pipeline gives it (no settings read)."""
    from .._services import Emitter, RunServices, SharedHttp  # noqa: PLC0415

    services = RunServices(
        pipeline=pipeline.name,
        root="",  # not part of the command: resume_command does not read it
        http=SharedHttp(None),
        alerters=(),
        emit=Emitter([]),
        resume_hint=pipeline.source,
    )
    return resume_command(services, run_id)


def render_report(pipeline: Pipeline, run_id: str) -> str:
    """The HTML page for run ``run_id`` of ``pipeline`` (see the module docstring)."""
    from ._status import collect  # noqa: PLC0415

    history = pipeline.history()
    every = list_runs(history, pipeline.step_names, dead_letters=False)  # reads each summary
    recent = every[:HISTORY_RUNS]
    this = next(
        (r for r in every if r.run_id == run_id), RunSummary(run_id=run_id, state="unknown")
    )
    live = history.holder(run_id) is not None
    attempts = read_attempts(history.journal(run_id), live=live)
    rows = collect(pipeline, run_id)
    params, items = _marker_extras(history, run_id, pipeline.step_names)
    params = {**params, **dict(this.params)}
    summary = history.summaries([run_id])[run_id] or {}
    title = f"{pipeline.name} · run {run_id}"
    meta = (
        f"{_badge(this.state)} &nbsp; started {escape(this.started[:19].replace('T', ' '))} UTC"
        f" &nbsp;·&nbsp; took {escape(format_duration(this.duration_s) or '-')}"
        f" &nbsp;·&nbsp; {len(attempts)} step attempt(s), "
        f"{sum(a.retries for a in attempts)} HTTP retries"
    )
    if summary.get("pid"):
        meta += f" &nbsp;·&nbsp; pid {escape(str(summary['pid']))}"
    failure = ""
    failed = [a for a in attempts if a.outcome == "failed"]
    if this.state == "failed" or (failed and this.state not in ("succeeded",)):
        last = failed[-1] if failed else None
        step = this.failed_step or (last.step if last else "")
        error = (f"{this.error_type}: {this.error}" if this.error_type and this.error else "") or (
            last.error if last else this.error_type
        )
        failure = (
            '<section id="failure"><h2>Failure</h2>'
            f"<p>Step <b>{escape(step) or '(before the first step)'}</b> failed"
            f" after {len([a for a in attempts if a.step == step])} attempt(s).</p>"
            f"<pre>{escape(error or 'no error recorded')}</pre>"
            f"<p>Resume with <code>{escape(_resume(pipeline, run_id))}</code></p></section>"
        )
    if params:
        params_html = (
            '<table id="params"><tr><th>Key</th><th>Value</th></tr>'
            + "".join(
                f"<tr><td><code>{escape(k)}</code></td><td>{escape(v)}</td></tr>"
                for k, v in sorted(params.items())
            )
            + "</table>"
        )
    else:
        params_html = '<p class="muted" id="params">No parameters.</p>'
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">"
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        f'<header><h1>{escape(title)}</h1><div class="meta">{meta}</div></header><main>'
        f"{failure}"
        f"<section><h2>Timeline</h2>{_timeline(attempts, pipeline.step_names)}</section>"
        f"<section><h2>Steps</h2>{_steps_table(rows, items)}</section>"
        f'<section id="dead-letters"><h2>Dead letters</h2>'
        f"{_dead_letters(history.deadletters(), run_id)}"
        "</section>"
        f"<section><h2>Parameters</h2>{params_html}</section>"
        f"<section><h2>Last {len(recent)} runs of {escape(pipeline.name)}</h2>"
        f"{_history_chart(recent, run_id)}</section>"
        f'<p class="muted">Made by stalwart from {escape(history.location(run_id))}.</p>'
        "</main></body></html>\n"
    )


def write_report(pipeline: Pipeline, run_id: str, output: str) -> None:
    """Render the report and write it to ``output`` atomically."""
    from .._atomic import atomic_write_text  # noqa: PLC0415

    atomic_write_text(output, render_report(pipeline, run_id))
