"""What an operator reads from the decide step: normal flow prints no error, a real failure still does.

A one-host demo fleet whose host runs another build of appcore.dll (v1-mismatch): the engine's plan refuses its
process for a reason a restart fixes, which is the cold path's normal input and must not print "fatal" or
"...ignoring". The same host with an unsigned package and hotpatch_allow_unsigned false is a real failure: the plan
task is reported failed and the host ends failed with the plan's reason. Both runs are check mode (nothing changes).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from demo.fleet import Fleet
from demo.main_job import build_demo_package, playbook_command, playbook_environment
from tests.support.running_fleet import have_wine, running_fleet

pytestmark = [pytest.mark.wine, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    if not have_wine():
        pytest.skip("needs wine64 and mingw-w64 (make deps)")
    with running_fleet(tmp_path_factory.mktemp("decide-fleet"), hosts=1, mismatch_host=1) as fleet:
        yield fleet


def _check_run(fleet: Fleet, tmp_path: Path, extra: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    package = build_demo_package(tmp_path / "packages").path
    report = tmp_path / "report"
    cmd = playbook_command(fleet.inventory_path, package, report, extra, check=True)
    done = subprocess.run(cmd, cwd=ROOT, env=playbook_environment(), capture_output=True, text=True, check=False)
    [entry] = json.loads((report / "hotpatch-report.json").read_text())["hosts"]
    return done.stdout + done.stderr, entry


def _task_output(out: str, task: str) -> str:
    start = out.index(f"TASK [rebootless.windows.hotpatch : {task}]")
    return out[start : out.index("TASK [", start + 1)]


def test_a_host_the_engine_sends_to_the_cold_path_prints_no_error(fleet: Fleet, tmp_path: Path) -> None:
    out, entry = _check_run(fleet, tmp_path, {})
    assert (entry["decision"], entry["result"]) == ("cold", "would_cold"), entry
    assert "fatal:" not in out and "...ignoring" not in out and "[ERROR]" not in out, out[-4000:]
    assert "ok: [demo-host-1]" in _task_output(out, "Decide | plan (check mode, changes nothing)")


def test_a_plan_the_engine_refuses_as_a_whole_is_still_a_red_failure(fleet: Fleet, tmp_path: Path) -> None:
    out, entry = _check_run(fleet, tmp_path, {"hotpatch_allow_unsigned": False})
    plan = _task_output(out, "Decide | plan (check mode, changes nothing)")
    assert "fatal: [demo-host-1]: FAILED!" in plan and "...ignoring" in plan
    assert (entry["decision"], entry["result"]) == ("fail", "failed"), entry
    assert any(r.startswith("plan failed:") and "unsigned" in r for r in entry["reasons"]), entry["reasons"]
