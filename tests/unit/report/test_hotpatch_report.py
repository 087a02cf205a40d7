"""The run report: JSON, Markdown, self-contained HTML with an SVG timeline, JUnit XML, and no secret in any."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from ansible.errors import AnsibleActionFail

from ansible_collections.rebootless.windows.plugins.action.hotpatch_report import (
    FILE_NAMES,
    build_report,
    redact,
    render_html,
    render_junit,
    render_markdown,
    write_reports,
)

SECRET = "APIKEY-52d0b8aa-prod-ledger"


def marks(*phases: tuple[str, str]) -> list[dict[str, str]]:
    return [{"phase": p, "at": f"2026-12-01T00:00:{s}Z"} for p, s in phases]


def record(host: str, result: str, wave: int, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "host": host,
        "wave": wave,
        "result": result,
        "decision": {"action": "hotpatch", "reason": "1 process(es) to hotpatch, 0 already patched", "row": 8},
        "reasons": [],
        "rolled_back": False,
        "changed": result != "skipped",
        "package": {"id": "appcore-cve-fix", "version": "2.0.0", "sha256": "ab" * 32},
        "processes": [{"pid": 10, "name": "appsvc.exe", "result": "patched", "pause_us": 240}],
        "pause_us_max": 240,
        "health": [
            {
                "phase": "post",
                "name": "version",
                "type": "request",
                "ok": True,
                "attempts": 1,
                "detail": "answer matches",
            }
        ],
        "window": {},
        "marks": marks(
            ("facts", "00"), ("preflight", "01"), ("decide", "02"), ("apply", "03"), ("verify", "05"), ("end", "06")
        ),
    }
    base.update(extra)
    return base


@pytest.fixture
def run() -> dict[str, Any]:
    records = {
        "h1": record("h1", "hotpatched", 1),
        "h2": record("h2", "hotpatched", 2),
        "h3": record(
            "h3",
            "cold_patched",
            3,
            decision={"action": "cold", "reason": "appcore.dll is not the pinned base image", "row": 6},
            pause_us_max=0,
            marks=marks(("facts", "06"), ("decide", "07"), ("cold", "08"), ("end", "12")),
        ),
        "h4": record(
            "h4",
            "deferred",
            3,
            rolled_back=True,
            reasons=["post-health failed: version pin", "cold path deferred: maintenance window closed"],
            health=[
                {
                    "phase": "post",
                    "name": "version pin",
                    "type": "request",
                    "ok": False,
                    "attempts": 3,
                    "detail": "answer does not match",
                },
                # A careless check detail that leaked the secret must still not reach any file.
                {
                    "phase": "post",
                    "name": "leak",
                    "type": "request",
                    "ok": False,
                    "attempts": 1,
                    "detail": f"answer was {SECRET}",
                },
            ],
            url_password="hunter2",
        ),
        "h5": None,
    }
    waves = [
        {
            "index": 1,
            "hosts": ["h1"],
            "started": "2026-12-01T00:00:00Z",
            "finished": "2026-12-01T00:00:06Z",
            "failed": [],
            "failed_percent": 0.0,
        },
        {
            "index": 2,
            "hosts": ["h2"],
            "started": "2026-12-01T00:00:06Z",
            "finished": "2026-12-01T00:00:07Z",
            "failed": [],
            "failed_percent": 0.0,
        },
        {
            "index": 3,
            "hosts": ["h3", "h4"],
            "started": "2026-12-01T00:00:06Z",
            "finished": "2026-12-01T00:00:12Z",
            "failed": ["h4"],
            "failed_percent": 50.0,
        },
    ]
    loadgen = {
        "started_at": 1795996800.0,  # 2026-12-01T00:00:00Z
        "duration_s": 12.0,
        "sent": 240,
        "failed": 7,
        "targets": {
            "h1": {
                "sent": 120,
                "failed": 0,
                "p50_ms": 0.4,
                "p99_ms": 1.9,
                "series": [{"t": 3, "sent": 10, "failed": 0, "p50_ms": 0.4, "p99_ms": 2.5}],
            },
            "h3": {
                "sent": 120,
                "failed": 7,
                "p50_ms": 0.5,
                "p99_ms": 900.0,
                "series": [{"t": 9, "sent": 10, "failed": 7, "p50_ms": None, "p99_ms": None}],
            },
        },
    }
    return build_report(
        records,
        hosts=["h1", "h2", "h3", "h4", "h5"],
        waves=waves,
        stopped="",
        title="Demo rollout",
        loadgen=loadgen,
        redact_patterns=[r"hunter\d"],
    )


def test_totals_count_each_result_and_rollbacks(run: dict[str, Any]) -> None:
    totals = run["totals"]
    assert (totals["hotpatched"], totals["cold_patched"], totals["deferred"], totals["not_run"], totals["failed"]) == (
        2,
        1,
        1,
        1,
        0,
    )
    assert totals["rolled_back"] == 1
    assert totals["hosts"] == 5
    assert totals["pause_us_max"] == 240


def test_host_without_record_is_not_run_with_a_reason(run: dict[str, Any]) -> None:
    h5 = next(h for h in run["hosts"] if h["host"] == "h5")
    assert h5["result"] == "not_run"
    assert "unreachable" in h5["reasons"][0]


def test_stopped_rollout_reason_goes_to_hosts_that_never_ran() -> None:
    report = build_report({"a": record("a", "failed", 1), "b": None}, stopped="wave 1: 1 of 1 host(s) failed")
    b = report["hosts"][1]
    assert b["reasons"] == ["wave 1: 1 of 1 host(s) failed"]
    assert report["stopped"].startswith("wave 1")


def test_phase_durations_come_from_the_marks(run: dict[str, Any]) -> None:
    h1 = run["hosts"][0]
    assert h1["phases"] == {"facts": 1.0, "preflight": 1.0, "decide": 1.0, "apply": 2.0, "verify": 1.0}
    assert (h1["started"], h1["finished"]) == ("2026-12-01T00:00:00Z", "2026-12-01T00:00:06Z")


def test_load_figures_are_grouped_by_the_hosts_result(run: dict[str, Any]) -> None:
    groups = run["loadgen"]["groups"]
    assert groups["hotpatched"]["failed"] == 0
    assert groups["cold_patched"] == {"targets": 1, "sent": 120, "failed": 7, "p50_ms": 0.5, "p99_ms": 900.0}
    assert {(p["t"], p["group"]) for p in run["loadgen"]["series"]} == {(3, "hotpatched"), (9, "cold_patched")}


def test_markdown_has_totals_waves_hosts_reasons_and_load(run: dict[str, Any]) -> None:
    text = render_markdown(run)
    assert text.startswith("# Demo rollout")
    assert "| hotpatched | cold_patched | deferred | not_run | rolled back | hosts |" in text
    assert "| 2 | 1 | 1 | 1 | 1 | 5 |" in text
    assert "| h4 | 3 | hotpatch | **deferred** | yes |" in text
    assert "post check `version pin` failed: answer does not match" in text
    assert "- **h1** (hotpatched): none" in text
    assert "| cold_patched | 1 | 120 | 7 | 0.50 | 900.00 |" in text


def test_markdown_says_when_an_unsigned_package_was_allowed() -> None:
    report = build_report({"lab": record("lab", "hotpatched", 1, allow_unsigned=True)})
    assert "- **lab** (hotpatched) (unsigned package allowed): " in render_markdown(report)


def test_html_is_self_contained_with_a_timeline_of_waves_and_load(run: dict[str, Any]) -> None:
    page = render_html(run)
    assert page.startswith("<!DOCTYPE html>")
    assert "<svg" in page
    assert page.count("wave 1</text>") == 1
    assert "wave 3</text>" in page
    assert "h3 cold 4.00 s" in page  # a phase bar's tooltip
    assert "<polyline" in page  # p99 line
    assert 'fill="#d9534f" opacity="0.6"' in page  # failures bar
    for external in ("<script", "src=", "href=", "@import", "url("):
        assert external not in page


def test_junit_has_one_case_per_host_with_failures_and_skips() -> None:
    report = build_report(
        {
            "a": record("a", "hotpatched", 1),
            "b": record("b", "failed", 1, reasons=["apply incomplete"]),
            "c": record("c", "deferred", 2),
        },
        stopped="wave 1: 1 of 2 host(s) failed",
    )
    suite = ET.fromstring(render_junit(report))
    assert suite.get("tests") == "4"  # three hosts and the stopped rollout
    assert suite.get("failures") == "2"
    assert suite.get("skipped") == "1"
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert cases["b"].find("failure").get("message") == "apply incomplete"  # type: ignore[union-attr]
    assert cases["c"].find("skipped") is not None
    assert cases["a"].find("failure") is None
    assert cases["a"].get("classname") == "hotpatch.wave1"


def test_no_secret_reaches_any_file(run: dict[str, Any], tmp_path: Path) -> None:
    files = write_reports(run, tmp_path)
    assert set(files) == set(FILE_NAMES)
    for path in files.values():
        text = Path(path).read_text(encoding="utf-8")
        assert SECRET not in text
        assert "hunter2" not in text
    data = json.loads(Path(files["json"]).read_text())
    h4 = next(h for h in data["hosts"] if h["host"] == "h4")
    assert h4["health"][1]["detail"] == "answer was <redacted>"


def test_redact_masks_credential_keys_and_patterns() -> None:
    out = redact(
        {"url_password": "x", "api_key": "k", "note": "token=abc123 and Bearer abcdefghijkl", "empty_password": ""},
        [r"ab+c"],
    )
    assert out["url_password"] == "<redacted>"
    assert out["api_key"] == "<redacted>"
    assert out["empty_password"] == ""
    assert "abc123" not in out["note"]
    assert "abcdefghijkl" not in out["note"]


def test_invalid_redact_regex_says_which() -> None:
    with pytest.raises(AnsibleActionFail, match=r"redact pattern '\(' is not a valid regex"):
        redact({}, ["("])


def test_write_reports_refuses_unknown_formats_and_writes_only_the_chosen(tmp_path: Path, run: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="unknown report format"):
        write_reports(run, tmp_path, ["pdf"])
    files = write_reports(run, tmp_path / "sub", ["junit"])
    assert list(files) == ["junit"]
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["hotpatch-report.junit.xml"]


def test_waves_and_totals_count_failed_hosts_by_the_same_rule(run: dict[str, Any]) -> None:
    # h4 was rolled back and deferred: not "failed" (its result), but rolled back, and counted by the wave gate.
    wave3 = run["waves"][2]
    assert (wave3["failed_results"], wave3["rolled_back"], wave3["failed"]) == (0, 1, ["h4"])
    assert sum(w["failed_results"] for w in run["waves"]) == run["totals"]["failed"]
    assert sum(w["rolled_back"] for w in run["waves"]) == run["totals"]["rolled_back"]
    text = render_markdown(run)
    assert "| wave | hosts | failed | rolled back | counted by the wave gate | started | finished |" in text
    assert "| 3 | h3, h4 | 0 | 1 | 1 (50.0%): h4 |" in text
