"""The demo's printed summary (demo/main_job.py) from a real run report (plugins/action/hotpatch_report.py)."""

from __future__ import annotations

from typing import Any

from ansible_collections.rebootless.windows.plugins.action.hotpatch_report import build_report
from demo.main_job import REASON_WIDTH, _summary, reason_lines

DEFERRED = "cold path deferred: maintenance window closed, next opening 2026-12-03T01:00:00Z (owners' weekly window)"
POST = r"post-health failed: owner's version pin (appcore 1.0.2): answer does not match /^appcore 1\.0\.2$/"


def _record(host: str, result: str, wave: int, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "host": host,
        "wave": wave,
        "result": result,
        "decision": {"action": "hotpatch", "reason": "1 process(es) to hotpatch, 0 already patched"},
        "reasons": ["hotpatched 1 process (pid 28970), pause 200 µs", "post-health 6/6 passed"],
        "rolled_back": False,
        "pause_us_max": 200,
    }
    base.update(extra)
    return base


def _report() -> dict[str, Any]:
    records = {
        "demo-host-1": _record("demo-host-1", "hotpatched", 1),
        "demo-host-4": _record(
            "demo-host-4",
            "deferred",
            2,
            rolled_back=True,
            reasons=["hotpatched 1 process (pid 29057), pause 187 µs", POST, DEFERRED],
        ),
    }
    waves = [
        {"index": 1, "hosts": ["demo-host-1"], "failed": [], "failed_percent": 0.0},
        {"index": 2, "hosts": ["demo-host-4"], "failed": ["demo-host-4"], "failed_percent": 100.0},
    ]
    return build_report(records, hosts=list(records), waves=waves)


def test_a_long_reason_wraps_at_word_boundaries_and_keeps_every_word() -> None:
    report = _report()
    host4 = next(h for h in report["hosts"] if h["host"] == "demo-host-4")
    lines = reason_lines(host4)
    assert len(lines) > 1
    assert all(len(line) <= REASON_WIDTH for line in lines)
    assert " ".join(lines) == "; ".join(host4["reasons"])
    assert "(owners' weekly window)" in " ".join(lines)


def test_the_summary_prints_the_real_rollback_reason_and_consistent_failed_counts() -> None:
    rows = _summary(_report())
    text = " ".join(" ".join(row.split()) for row in rows)  # continuation lines read as one text
    assert "post-health failed: owner's version pin (appcore 1.0.2)" in text
    assert r"/^appcore 1\.0\.2$/" in text and "\\\\" not in text
    totals = rows[-1]
    assert "0 failed" in totals and "1 rolled back (1 counted as failed by the wave gate)" in totals


def test_the_summary_states_the_outcome_and_an_allowed_unsigned_package_as_the_markdown_does() -> None:
    records = {"lab": _record("lab", "hotpatched", 1, allow_unsigned=True)}
    report = build_report(records, hosts=["lab"], waves=[{"index": 1, "hosts": ["lab"], "failed": []}])
    text = " ".join(" ".join(row.split()) for row in _summary(report))
    assert "(unsigned package allowed) hotpatched 1 process (pid 28970), pause 200 µs; post-health 6/6 passed" in text
    assert "to hotpatch" not in text
    unsigned = dict(report, hosts=[dict(report["hosts"][0], allow_unsigned=False)])
    assert "unsigned" not in " ".join(_summary(unsigned))
