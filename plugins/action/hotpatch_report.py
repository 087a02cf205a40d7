# Copyright: rebootless.windows contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of ``rebootless.windows.hotpatch_report``: turn every host's ``hotpatch_record`` into run reports.

Writes, into ``dest``: ``hotpatch-report.json`` (the whole run, the source of the others), ``hotpatch-report.md``,
``hotpatch-report.html`` (self-contained: inline CSS and an inline SVG timeline of the waves and, when given, the
load generator's latency and failures per second) and ``hotpatch-report.junit.xml`` (one test case per host).
Nothing secret reaches a file: keys that name credentials are masked, and so is any text matching a default or
caller-given regex (``redact``). The pure functions (``build_report``, ``render_*``, ``write_reports``) are used by
demo/main_job.py to re-render with the load generator's figures after the run.
"""

from __future__ import annotations

import html
import itertools
import json
import os
import re
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

try:
    from ansible.errors import AnsibleActionFail
    from ansible.plugins.action import ActionBase
except ImportError:  # pragma: no cover - the renderers stay importable without ansible (demo/main_job.py)
    ActionBase = object

    class AnsibleActionFail(Exception):  # type: ignore[no-redef]
        """Stand-in when ansible is absent."""


__all__ = [
    "FILE_NAMES",
    "ActionModule",
    "HostEntry",
    "attach_loadgen",
    "build_report",
    "redact",
    "render_html",
    "render_junit",
    "render_markdown",
    "write_reports",
]

FILE_NAMES = {
    "json": "hotpatch-report.json",
    "markdown": "hotpatch-report.md",
    "html": "hotpatch-report.html",
    "junit": "hotpatch-report.junit.xml",
}
RESULTS = ("hotpatched", "cold_patched", "deferred", "skipped", "failed", "not_run")
CHECK_RESULTS = ("would_hotpatch", "would_cold", "would_defer")
MASK = "<redacted>"
# Keys whose values are never written, whatever they hold.
_SECRET_KEY = re.compile(r"(?i)(pass(word|wd)?|secret|token|api[_-]?key|private[_-]?key|credential|auth)")
# Values that look like credentials wherever they appear (in reasons, details, ...).
DEFAULT_REDACT = (
    r"(?i)\b(?:api[_-]?key|apikey)[-_:= ]+[A-Za-z0-9._-]{6,}",
    r"(?i)\bbearer\s+[A-Za-z0-9._~+/-]{8,}=*",
    r"(?i)\b(password|passwd|pwd|secret|token)\s*[=:]\s*\S+",
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
)
PHASE_COLOURS = {
    "facts": "#9aa5b1",
    "preflight": "#5b8def",
    "decide": "#b18cf0",
    "apply": "#2fbf71",
    "verify": "#17a2b8",
    "rollback": "#f0ad4e",
    "cold": "#d9534f",
}
RESULT_COLOURS = {
    "hotpatched": "#2fbf71",
    "cold_patched": "#5b8def",
    "deferred": "#f0ad4e",
    "skipped": "#9aa5b1",
    "failed": "#d9534f",
    "not_run": "#cccccc",
}


@dataclass
class HostEntry:
    """One host's line in the report: result in RESULTS (or would_* in check mode); times ISO 8601 UTC;
    pause_us_max in microseconds; phases maps a phase to its duration in seconds."""

    host: str
    wave: int = 0
    result: str = "not_run"
    decision: str = ""
    decision_reason: str = ""
    rolled_back: bool = False
    changed: bool = False
    reasons: list[str] = field(default_factory=list)
    pause_us_max: int = 0
    processes: list[dict[str, Any]] = field(default_factory=list)
    health: list[dict[str, Any]] = field(default_factory=list)
    window: dict[str, Any] = field(default_factory=dict)
    package: dict[str, Any] = field(default_factory=dict)
    allow_unsigned: bool = False
    started: str | None = None
    finished: str | None = None
    phases: dict[str, float] = field(default_factory=dict)
    marks: list[dict[str, str]] = field(default_factory=list)


def _parse_time(text: Any) -> datetime | None:
    if not text:
        return None
    value = str(text)
    if value.endswith("Z"):
        value = value[:-1]
        if "+" in value[10:]:  # "...+00:00Z" from isoformat() ~ 'Z' on an aware time
            value = value[: value.rindex("+")]
        value += "+00:00"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def _phases(marks: list[dict[str, str]]) -> dict[str, float]:
    """Seconds per phase from ordered marks [{phase, at}] (the last mark is 'end'); repeated phases add up."""
    out: dict[str, float] = {}
    times = [(m.get("phase", ""), _parse_time(m.get("at"))) for m in marks]
    for (phase, start), (_next_phase, end) in itertools.pairwise(times):
        if start and end and phase != "end":
            out[phase] = round(out.get(phase, 0.0) + max(0.0, (end - start).total_seconds()), 3)
    return out


def _as_int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _entry(host: str, record: Mapping[str, Any] | None, stopped: str) -> HostEntry:
    if not record:
        reason = stopped or "no record: the host was unreachable or the play ended before it"
        return HostEntry(host=host, result="not_run", reasons=[reason])
    decision = record.get("decision") or {}
    marks = [dict(m) for m in record.get("marks") or [] if isinstance(m, Mapping)]
    times = [t for t in (_parse_time(m.get("at")) for m in marks) if t]
    return HostEntry(
        host=host,
        wave=_as_int(record.get("wave")),
        result=str(record.get("result") or "failed"),
        decision=str(decision.get("action") or ""),
        decision_reason=str(decision.get("reason") or ""),
        rolled_back=bool(record.get("rolled_back")),
        changed=bool(record.get("changed")),
        reasons=[str(r) for r in record.get("reasons") or []],
        pause_us_max=_as_int(record.get("pause_us_max")),
        processes=[dict(p) for p in record.get("processes") or [] if isinstance(p, Mapping)],
        health=[dict(h) for h in record.get("health") or [] if isinstance(h, Mapping)],
        window=dict(record.get("window") or {}),
        package=dict(record.get("package") or {}),
        allow_unsigned=bool(record.get("allow_unsigned")),
        started=_iso(min(times)) if times else None,
        finished=_iso(max(times)) if times else None,
        phases=_phases(marks),
        marks=marks,
    )


def redact(value: Any, patterns: Iterable[str] = ()) -> Any:
    """Copy of value (JSON-like) with credential-named keys masked and every string scrubbed by the patterns
    (DEFAULT_REDACT plus the caller's). Raises AnsibleActionFail for an invalid regex, naming it."""
    compiled = []
    for pattern in (*DEFAULT_REDACT, *patterns):
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise AnsibleActionFail(f"redact pattern {pattern!r} is not a valid regex: {exc}") from exc

    def walk(item: Any, key: str = "") -> Any:
        if key and _SECRET_KEY.search(key) and item not in (None, "", [], {}):
            return MASK
        if isinstance(item, Mapping):
            return {str(k): walk(v, str(k)) for k, v in item.items()}
        if isinstance(item, list | tuple):
            return [walk(v) for v in item]
        if isinstance(item, str):
            for regex in compiled:
                item = regex.sub(MASK, item)
            return item
        return item

    return walk(value)


def build_report(
    records: Mapping[str, Mapping[str, Any] | None],
    hosts: Iterable[str] | None = None,
    waves: Iterable[Mapping[str, Any]] = (),
    stopped: str = "",
    title: str = "Hotpatch rollout",
    check_mode: bool = False,
    redact_patterns: Iterable[str] = (),
    loadgen: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The run as one JSON-ready dict: {title, generated, check_mode, stopped, totals, waves, hosts, loadgen}.

    ``records`` maps host -> hotpatch_record (None when the host has none); ``hosts`` gives the order and may name
    hosts without a record (reported not_run). ``loadgen`` is demo/loadgen.py's JSON (LoadResult.to_json()).
    """
    names = list(hosts) if hosts is not None else list(records)
    for name in records:
        if name not in names:
            names.append(name)
    entries = [_entry(h, records.get(h), stopped) for h in names]
    totals = dict.fromkeys((*RESULTS, *CHECK_RESULTS), 0)
    for entry in entries:
        totals[entry.result] = totals.get(entry.result, 0) + 1
    totals["rolled_back"] = sum(1 for e in entries if e.rolled_back)
    totals["hosts"] = len(entries)
    totals["changed"] = sum(1 for e in entries if e.changed)
    pauses = [e.pause_us_max for e in entries if e.result in ("hotpatched", "would_hotpatch") and e.pause_us_max]
    totals["pause_us_max"] = max(pauses, default=0)
    wave_list = []
    for wave in waves:
        members = [e for e in entries if e.host in (wave.get("hosts") or [])]
        wave_list.append(
            {
                "index": _as_int(wave.get("index")),
                "hosts": list(wave.get("hosts") or []),
                "started": wave.get("started"),
                "finished": wave.get("finished"),
                # "failed" is the wave gate's list (result failed, or rolled back unless hotpatch_rollback_is_failure
                # is false); failed_results / rolled_back use the same rule as the totals, so the two never disagree.
                "failed": list(wave.get("failed") or []),
                "failed_percent": wave.get("failed_percent", 0),
                "failed_results": sum(1 for e in members if e.result == "failed"),
                "rolled_back": sum(1 for e in members if e.rolled_back),
                "results": {r: sum(1 for e in members if e.result == r) for r in {e.result for e in members}},
            }
        )
    report = {
        "title": title,
        "generated": _iso(datetime.now(UTC)),
        "check_mode": bool(check_mode),
        "stopped": stopped or "",
        "totals": totals,
        "waves": wave_list,
        "hosts": [asdict(e) for e in entries],
        "loadgen": _load_summary(loadgen, entries) if loadgen else None,
    }
    return redact(report, redact_patterns)  # type: ignore[no-any-return]


def _load_summary(loadgen: Mapping[str, Any], entries: list[HostEntry]) -> dict[str, Any]:
    """Load generator figures grouped by the host's result: {started_at, groups: {result: {...}}, series: [...]}.

    Targets are matched to hosts by name; each group sums sent/failed and keeps the worst p50/p99 of its targets.
    Series points are per second since the load generator started: {t, group, sent, failed, p99_ms}.
    """
    by_host = {e.host: e.result for e in entries}
    groups: dict[str, dict[str, Any]] = {}
    series: dict[tuple[int, str], dict[str, Any]] = {}
    for name, target in (loadgen.get("targets") or {}).items():
        group = by_host.get(name, "other")
        g = groups.setdefault(group, {"targets": 0, "sent": 0, "failed": 0, "p50_ms": None, "p99_ms": None})
        g["targets"] += 1
        g["sent"] += _as_int(target.get("sent"))
        g["failed"] += _as_int(target.get("failed"))
        for key in ("p50_ms", "p99_ms"):
            if target.get(key) is not None:
                g[key] = max(g[key] or 0.0, float(target[key]))
        for point in target.get("series") or []:
            slot = series.setdefault(
                (_as_int(point.get("t")), group),
                {"t": _as_int(point.get("t")), "group": group, "sent": 0, "failed": 0, "p99_ms": None},
            )
            slot["sent"] += _as_int(point.get("sent"))
            slot["failed"] += _as_int(point.get("failed"))
            if point.get("p99_ms") is not None:
                slot["p99_ms"] = max(slot["p99_ms"] or 0.0, float(point["p99_ms"]))
    return {
        "started_at": _iso(datetime.fromtimestamp(float(loadgen["started_at"]), UTC))
        if loadgen.get("started_at")
        else None,
        "duration_s": loadgen.get("duration_s"),
        "sent": _as_int(loadgen.get("sent")),
        "failed": _as_int(loadgen.get("failed")),
        "groups": groups,
        "series": [series[k] for k in sorted(series)],
    }


def attach_loadgen(report: Mapping[str, Any], loadgen: Mapping[str, Any]) -> dict[str, Any]:
    """Copy of a built report (e.g. read back from hotpatch-report.json) with the load generator's figures
    attached, grouped by each host's result; used after the run, when the load generator has stopped."""
    entries = [HostEntry(host=h["host"], result=h["result"]) for h in report["hosts"]]
    updated = dict(report)
    updated["loadgen"] = _load_summary(loadgen, entries)
    return updated


# -- Markdown ---------------------------------------------------------------------------------------------------


def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Mapping[str, Any]) -> str:
    """A readable summary: totals, waves, one table row per host, then reasons and failed checks per host."""
    totals = report["totals"]
    lines = [f"# {report['title']}", ""]
    lines.append(
        f"Generated {report['generated']}" + (" (check mode: nothing was changed)" if report["check_mode"] else "")
    )
    lines.append("")
    if report.get("stopped"):
        lines += [f"**Rollout stopped:** {report['stopped']}", ""]
    shown = [r for r in (*RESULTS, *CHECK_RESULTS) if totals.get(r)] or ["hotpatched"]
    lines += ["| " + " | ".join([*shown, "rolled back", "hosts"]) + " |", "|" + "---|" * (len(shown) + 2)]
    lines.append(
        "| " + " | ".join(str(totals.get(r, 0)) for r in shown) + f" | {totals['rolled_back']} | {totals['hosts']} |"
    )
    lines.append("")
    if report["waves"]:
        lines += [
            "## Waves",
            "",
            "| wave | hosts | failed | rolled back | counted by the wave gate | started | finished |",
            "|---|---|---|---|---|---|---|",
        ]
        for wave in report["waves"]:
            gate = ", ".join(wave["failed"])
            lines.append(
                f"| {wave['index']} | {_md_cell(', '.join(wave['hosts']))} | {wave.get('failed_results', 0)} "
                f"| {wave.get('rolled_back', 0)} | {len(wave['failed'])} ({wave['failed_percent']}%){': ' if gate else ''}"
                f"{_md_cell(gate)} | {wave['started'] or ''} | {wave['finished'] or ''} |"
            )
        lines += [
            "",
            "*failed*: hosts whose result is `failed` (as in the totals); *counted by the wave gate*: failed hosts plus "
            "rolled-back ones (unless `hotpatch_rollback_is_failure: false`), compared with `hotpatch_max_fail_percentage`.",
            "",
        ]
    lines += ["## Hosts", "", "| host | wave | decision | result | rolled back | pause (µs) | health | time (s) |"]
    lines.append("|---|---|---|---|---|---|---|---|")
    for host in report["hosts"]:
        checks = host["health"]
        ok = sum(1 for c in checks if c.get("ok"))
        total = sum(host["phases"].values())
        lines.append(
            f"| {_md_cell(host['host'])} | {host['wave'] or ''} | {_md_cell(host['decision'])} | **{host['result']}** "
            f"| {'yes' if host['rolled_back'] else ''} | {host['pause_us_max'] or ''} | {ok}/{len(checks)} | {total:.1f} |"
        )
    lines.append("")
    lines += ["## Reasons", ""]
    for host in report["hosts"]:
        lines.append(
            f"- **{_md_cell(host['host'])}** ({host['result']})"
            + (" (unsigned package allowed)" if host.get("allow_unsigned") else "")
            + ": "
            + _md_cell("; ".join(host["reasons"]) or "none")
        )
        for check in host["health"]:
            if not check.get("ok"):
                lines.append(
                    f"  - {check.get('phase')} check `{_md_cell(check.get('name'))}` failed: {_md_cell(check.get('detail'))}"
                )
    lines.append("")
    load = report.get("loadgen")
    if load:
        lines += [
            "## Load during the rollout",
            "",
            "| hosts | targets | requests | failed | p50 (ms) | p99 (ms) |",
            "|---|---|---|---|---|---|",
        ]
        for group, g in sorted(load["groups"].items()):
            lines.append(
                f"| {group} | {g['targets']} | {g['sent']} | {g['failed']} | {_fmt_ms(g['p50_ms'])} | {_fmt_ms(g['p99_ms'])} |"
            )
        lines.append("")
    return "\n".join(lines)


def _fmt_ms(value: Any) -> str:
    return "" if value is None else f"{float(value):.2f}"


# -- HTML with an inline SVG timeline ---------------------------------------------------------------------------


def _svg_timeline(report: Mapping[str, Any]) -> str:
    """Rows per host (phases as coloured bars, grouped by wave on shaded bands), time axis in seconds from the
    first mark; below it, when the report has load figures, failures (bars) and p99 latency (lines) per second."""
    hosts = [h for h in report["hosts"] if h["marks"]]
    load = report.get("loadgen") or None
    starts = [_parse_time(h["started"]) for h in hosts] + [_parse_time(w.get("started")) for w in report["waves"]]
    if load and load.get("started_at"):
        starts.append(_parse_time(load["started_at"]))
    ends = [_parse_time(h["finished"]) for h in hosts] + [_parse_time(w.get("finished")) for w in report["waves"]]
    known_starts = [s for s in starts if s]
    known_ends = [e for e in ends if e]
    if not known_starts:
        return "<p>No timings recorded.</p>"
    t0 = min(known_starts)
    t1 = max(known_ends or known_starts)
    if load and load.get("started_at") and load.get("duration_s"):
        t_load = _parse_time(load["started_at"])
        if t_load:
            t1 = max(
                t1, t_load + (datetime.fromtimestamp(float(load["duration_s"]), UTC) - datetime.fromtimestamp(0, UTC))
            )
    span = max((t1 - t0).total_seconds(), 1.0)
    left, width, row_h = 200, 760, 18
    chart_h = 120 if load else 0
    height = 30 + row_h * len(hosts) + (chart_h + 40 if load else 0) + 20

    def x(at: datetime | None) -> float:
        return left + width * (max(0.0, (at - t0).total_seconds()) / span if at else 0.0)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 20}" height="{height}" font-family="sans-serif" font-size="11">'
    ]
    for i, wave in enumerate(report["waves"]):
        rows = [k for k, h in enumerate(hosts) if h["host"] in wave["hosts"]]
        if not rows:
            continue
        y0, y1 = 20 + row_h * min(rows), 20 + row_h * (max(rows) + 1)
        shade = "#f3f6fa" if i % 2 == 0 else "#e8edf3"
        parts.append(f'<rect x="0" y="{y0}" width="{left + width + 20}" height="{y1 - y0}" fill="{shade}"/>')
        parts.append(
            f'<text x="{left + width + 18}" y="{y0 + 12}" text-anchor="end" fill="#555">wave {wave["index"]}</text>'
        )
    for k, host in enumerate(hosts):
        y = 20 + row_h * k
        colour = RESULT_COLOURS.get(host["result"], "#333")
        parts.append(
            f'<text x="4" y="{y + 13}" fill="{colour}">{html.escape(host["host"])} · {html.escape(host["result"])}</text>'
        )
        marks = [(m.get("phase", ""), _parse_time(m.get("at"))) for m in host["marks"]]
        for (phase, start), (_next_phase, end) in itertools.pairwise(marks):
            if not start or not end or phase == "end":
                continue
            x0, x1 = x(start), x(end)
            parts.append(
                f'<rect x="{x0:.1f}" y="{y + 3}" width="{max(x1 - x0, 1.0):.1f}" height="{row_h - 6}" fill="{PHASE_COLOURS.get(phase, "#888")}">'
                f"<title>{html.escape(host['host'])} {html.escape(phase)} {(end - start).total_seconds():.2f} s</title></rect>"
            )
    axis_y = 20 + row_h * len(hosts) + 4
    parts.append(f'<line x1="{left}" y1="{axis_y}" x2="{left + width}" y2="{axis_y}" stroke="#999"/>')
    for tick in range(6):
        tx = left + width * tick / 5
        parts.append(
            f'<text x="{tx:.1f}" y="{axis_y + 12}" text-anchor="middle" fill="#555">{span * tick / 5:.0f} s</text>'
        )
    if load:
        base = axis_y + 30 + chart_h
        t_load = _parse_time(load.get("started_at")) or t0
        points = load.get("series") or []
        max_p99 = max([p["p99_ms"] or 0.0 for p in points] + [1.0])
        max_failed = max([p["failed"] for p in points] + [1])
        parts.append(
            f'<text x="4" y="{base - chart_h + 10}" fill="#333">p99 latency (lines, max {max_p99:.1f} ms)</text>'
        )
        parts.append(
            f'<text x="4" y="{base - chart_h + 24}" fill="#d9534f">failed requests (bars, max {max_failed}/s)</text>'
        )
        parts.append(f'<line x1="{left}" y1="{base}" x2="{left + width}" y2="{base}" stroke="#999"/>')
        bar_w = max(width / span - 1, 1.0)
        for p in points:
            if p["failed"]:
                px = x(t_load) + width * p["t"] / span
                h = chart_h * p["failed"] / max_failed
                parts.append(
                    f'<rect x="{px:.1f}" y="{base - h:.1f}" width="{bar_w:.1f}" height="{h:.1f}" fill="#d9534f" opacity="0.6"/>'
                )
        for group in sorted({p["group"] for p in points}):
            coords = [
                f"{x(t_load) + width * (p['t'] + 0.5) / span:.1f},{base - chart_h * (p['p99_ms'] or 0.0) / max_p99:.1f}"
                for p in points
                if p["group"] == group and p["p99_ms"] is not None
            ]
            if coords:
                colour = RESULT_COLOURS.get(group, "#333")
                parts.append(
                    f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{" ".join(coords)}">'
                    f"<title>{html.escape(group)} hosts p99</title></polyline>"
                )
    parts.append("</svg>")
    return "".join(parts)


_CSS = (
    "body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}th{background:#f3f6fa}"
    ".stopped{background:#fdecea;border:1px solid #d9534f;padding:8px}.legend span{display:inline-block;"
    "padding:2px 6px;margin-right:4px;color:#fff;border-radius:3px}small{color:#666}"
)


def render_html(report: Mapping[str, Any]) -> str:
    """One self-contained page (no external resource): totals, the SVG timeline, waves, hosts with checks."""
    esc = html.escape
    totals = report["totals"]
    out = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(report['title'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(report['title'])}</h1><p><small>generated {esc(str(report['generated']))}"
        + (" · check mode: nothing was changed" if report["check_mode"] else "")
        + "</small></p>",
    ]
    if report.get("stopped"):
        out.append(f'<p class="stopped"><b>Rollout stopped:</b> {esc(report["stopped"])}</p>')
    shown = [r for r in (*RESULTS, *CHECK_RESULTS) if totals.get(r)]
    out.append(
        "<table><tr>" + "".join(f"<th>{esc(r)}</th>" for r in shown) + "<th>rolled back</th><th>hosts</th></tr><tr>"
    )
    out.append(
        "".join(f"<td>{totals.get(r, 0)}</td>" for r in shown)
        + f"<td>{totals['rolled_back']}</td><td>{totals['hosts']}</td></tr></table>"
    )
    out.append('<h2>Timeline</h2><p class="legend">')
    out.append("".join(f'<span style="background:{c}">{esc(p)}</span>' for p, c in PHASE_COLOURS.items()) + "</p>")
    out.append(_svg_timeline(report))
    load = report.get("loadgen")
    if load:
        out.append(
            "<h2>Load during the rollout</h2><table><tr><th>hosts</th><th>targets</th><th>requests</th><th>failed</th><th>p50 ms</th><th>p99 ms</th></tr>"
        )
        for group, g in sorted(load["groups"].items()):
            out.append(
                f"<tr><td>{esc(group)}</td><td>{g['targets']}</td><td>{g['sent']}</td><td>{g['failed']}</td>"
                f"<td>{_fmt_ms(g['p50_ms'])}</td><td>{_fmt_ms(g['p99_ms'])}</td></tr>"
            )
        out.append("</table>")
    out.append(
        "<h2>Hosts</h2><table><tr><th>host</th><th>wave</th><th>decision</th><th>result</th><th>pause µs</th><th>health checks</th><th>reasons</th></tr>"
    )
    for host in report["hosts"]:
        checks = "<br>".join(
            f"{'✔' if c.get('ok') else '✘'} {esc(str(c.get('phase')))} {esc(str(c.get('name')))}: {esc(str(c.get('detail')))}"
            for c in host["health"]
        )
        colour = RESULT_COLOURS.get(host["result"], "#333")
        out.append(
            f"<tr><td>{esc(host['host'])}</td><td>{host['wave'] or ''}</td><td>{esc(host['decision'])}<br><small>{esc(host['decision_reason'])}</small></td>"
            f'<td style="color:{colour}"><b>{esc(host["result"])}</b>{" (rolled back)" if host["rolled_back"] else ""}</td>'
            f"<td>{host['pause_us_max'] or ''}</td><td>{checks}</td><td>{'<br>'.join(esc(r) for r in host['reasons'])}</td></tr>"
        )
    out.append("</table></body></html>")
    return "\n".join(out)


# -- JUnit ------------------------------------------------------------------------------------------------------


def render_junit(report: Mapping[str, Any]) -> str:
    """JUnit XML: one suite for the run, one test case per host (classname = wave); failed -> <failure>, deferred /
    skipped / not_run -> <skipped> with the reason; health checks go to system-out."""
    suite = ET.Element("testsuite", name=report["title"], timestamp=str(report["generated"]))
    failures = skipped = 0
    total_time = 0.0
    for host in report["hosts"]:
        seconds = sum(host["phases"].values())
        total_time += seconds
        case = ET.SubElement(
            suite, "testcase", classname=f"hotpatch.wave{host['wave']}", name=host["host"], time=f"{seconds:.3f}"
        )
        reason = "; ".join(host["reasons"])
        if host["result"] == "failed":
            failures += 1
            ET.SubElement(case, "failure", message=reason or "failed", type="hotpatch").text = reason
        elif host["result"] in ("deferred", "skipped", "not_run", "would_defer"):
            skipped += 1
            ET.SubElement(case, "skipped", message=f"{host['result']}: {reason}")
        lines = [f"result: {host['result']}; decision: {host['decision']} ({host['decision_reason']})"]
        lines += [
            f"{'ok' if c.get('ok') else 'FAILED'} {c.get('phase')} {c.get('name')}: {c.get('detail')}"
            for c in host["health"]
        ]
        ET.SubElement(case, "system-out").text = "\n".join(lines)
    if report.get("stopped"):
        case = ET.SubElement(suite, "testcase", classname="hotpatch.rollout", name="rollout", time="0")
        ET.SubElement(case, "failure", message=report["stopped"], type="rollout_stopped").text = report["stopped"]
        failures += 1
    suite.set("tests", str(len(suite.findall("testcase"))))
    suite.set("failures", str(failures))
    suite.set("errors", "0")
    suite.set("skipped", str(skipped))
    suite.set("time", f"{total_time:.3f}")
    ET.indent(suite)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


# -- files ------------------------------------------------------------------------------------------------------


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o640)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_reports(report: Mapping[str, Any], dest: Path, formats: Iterable[str] = tuple(FILE_NAMES)) -> dict[str, str]:
    """Write the chosen formats into dest (created); returns {format: absolute path}. Raises ValueError for an
    unknown format name."""
    renderers = {
        "json": lambda r: json.dumps(r, indent=2, sort_keys=False) + "\n",
        "markdown": render_markdown,
        "html": render_html,
        "junit": render_junit,
    }
    chosen = list(formats)
    unknown = sorted(set(chosen) - set(renderers))
    if unknown:
        raise ValueError(f"unknown report format(s) {unknown}; choose from {sorted(renderers)}")
    dest.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in chosen:
        path = dest.resolve() / FILE_NAMES[name]
        _atomic_write(path, renderers[name](report))
        written[name] = str(path)
    return written


def _load_loadgen(value: Any) -> dict[str, Any] | None:
    if not value:
        return None
    if isinstance(value, Mapping):
        return dict(value)
    path = Path(str(value)).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AnsibleActionFail(f"loadgen: cannot read load generator JSON {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise AnsibleActionFail(f"loadgen: {path} does not hold a JSON object (demo/loadgen.py --out writes one)")
    return data


class ActionModule(ActionBase):
    """Runs on the controller only; never contacts a host. Files are run artifacts: changed is always false."""

    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("hosts", "records", "waves", "stopped", "dest", "formats", "loadgen", "redact", "title"))
    _SPEC: dict[str, Any] = {  # noqa: RUF012 - read-only spec, the shape ActionBase expects
        "hosts": {"type": "list", "elements": "str"},
        "records": {"type": "dict"},
        "waves": {"type": "list", "elements": "dict", "default": []},
        "stopped": {"type": "str", "default": ""},
        "dest": {"type": "path", "required": True},
        "formats": {"type": "list", "elements": "str", "default": list(FILE_NAMES), "choices": list(FILE_NAMES)},
        "loadgen": {"type": "raw"},
        "redact": {"type": "list", "elements": "str", "default": [], "no_log": False},
        "title": {"type": "str", "default": "Hotpatch rollout"},
    }

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        task_vars = task_vars or {}
        result: dict[str, Any] = super().run(tmp, task_vars)
        _spec, args = self.validate_argument_spec(argument_spec=self._SPEC)
        hosts = args["hosts"]
        records: dict[str, Any] = dict(args["records"] or {})
        if not records:
            hostvars = task_vars.get("hostvars") or {}
            for host in hosts or []:
                record = hostvars[host].get("hotpatch_record") if host in hostvars else None
                records[host] = record if isinstance(record, Mapping) else None
        report = build_report(
            records,
            hosts=hosts,
            waves=args["waves"],
            stopped=args["stopped"],
            title=args["title"],
            check_mode=bool(self._task.check_mode),
            redact_patterns=args["redact"],
            loadgen=_load_loadgen(args["loadgen"]),
        )
        try:
            files = write_reports(report, Path(args["dest"]), args["formats"])
        except OSError as exc:
            raise AnsibleActionFail(
                f"cannot write the report into {args['dest']}: {exc}; set hotpatch_report_dir to a writable folder"
            ) from exc
        result.update(
            changed=False, files=files, totals=report["totals"], stopped=report["stopped"], waves=len(report["waves"])
        )
        return result
