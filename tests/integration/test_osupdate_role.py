"""The hotpatch role's KB phase (hotpatch_kb) run by ansible-playbook on localhost: a non-Windows host skips it
and says so, and a KB that needs a reboot follows the maintenance-window policy (defer says when, fail stops).

The install itself needs a Windows host (the windows_kb Molecule scenario); here the phase files run with the
registered install result a Windows host would give, so the policy logic is exercised for real.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.local_play import run_local_playbook

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = """\
- hosts: localhost
  gather_facts: false
  vars:
    hotpatch__platform: "{platform}"
    hotpatch__marks: []
    hotpatch__reasons: []
    hotpatch__changed: false
    hotpatch_kb: 'C:\\\\ProgramData\\\\rebootless\\\\kb\\\\windows11.0-kb5099999-x64.msu'
    hotpatch_outside_window: {policy}
    hotpatch_maintenance_windows: {windows}
    hotpatch_now: "2026-12-01T10:00:00+00:00"
    hotpatch__kb: {{result: needs_reboot, reboot_required: true, reasons: ["installed; a restart completes it"]}}
    hotpatch__kb_record: {{path: "{{{{ hotpatch_kb }}}}", result: needs_reboot, reboot_required: true, rebooted: false}}
  tasks:
    - name: Run the phase
      ansible.builtin.include_role:
        name: rebootless.windows.hotpatch
        tasks_from: {tasks}
    - name: Show
      ansible.builtin.debug:
        msg: "RESULT {{{{ {{'reasons': hotpatch__reasons, 'kb': hotpatch__kb_record | default({{}}),
                             'marks': hotpatch__marks | map(attribute='phase') | list}} | to_json }}}}"
"""


def play(
    tmp_path: Path, tasks: str, platform: str = "windows", policy: str = "defer", windows: str = "[]"
) -> tuple[int, dict[str, Any], str]:
    book = tmp_path / "play.yml"
    book.write_text(PLAYBOOK.format(platform=platform, policy=policy, windows=windows, tasks=tasks))
    done = run_local_playbook(book, tmp_path)
    marker = done.stdout.rfind('"msg": "RESULT ')
    result = {}
    if marker >= 0:
        line = done.stdout[marker:].splitlines()[0]
        result = json.loads(json.loads("{" + line.rstrip(",") + "}")["msg"][len("RESULT ") :])
    return done.returncode, result, done.stdout + done.stderr


def test_a_non_windows_host_skips_the_kb_and_says_why(tmp_path: Path) -> None:
    rc, result, out = play(tmp_path, "kb", platform="wine")
    assert rc == 0, out
    assert result["reasons"] == ["KB skipped: Microsoft updates apply to Windows hosts, this one is wine"]
    assert result["kb"]["result"] == "skipped" and result["marks"] == ["kb"]


def test_a_kb_reboot_outside_the_window_is_deferred_with_the_next_opening(tmp_path: Path) -> None:
    windows = '[{name: sunday-night, days: [sun], start: "22:00", duration: 240}]'
    rc, result, out = play(tmp_path, "kb_reboot", windows=windows)
    assert rc == 0, out
    [reason] = result["reasons"]
    assert reason.startswith("KB reboot deferred: maintenance window closed, next opening ")
    assert "(sunday-night)" in reason
    assert result["kb"]["reboot"] == "deferred" and result["kb"]["rebooted"] is False


def test_without_any_window_a_kb_reboot_is_deferred_and_says_none_is_configured(tmp_path: Path) -> None:
    rc, result, out = play(tmp_path, "kb_reboot")
    assert rc == 0, out
    assert result["reasons"] == [
        "KB reboot deferred: maintenance window closed, and no window is configured (hotpatch_maintenance_windows)"
    ]


def test_the_fail_policy_stops_the_host_outside_the_window(tmp_path: Path) -> None:
    rc, _result, out = play(tmp_path, "kb_reboot", policy="fail")
    assert rc != 0
    assert "KB reboot refused: maintenance window closed" in out and "(hotpatch_outside_window=fail)" in out
