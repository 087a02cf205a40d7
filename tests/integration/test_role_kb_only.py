"""A KB-only rollout: roles/hotpatch with hotpatch_kb and no hotpatch_package, run by ansible-playbook.

The whole main job (playbooks/hotpatch.yml) runs on a one-host demo fleet (a Wine host: the KB phase skips it and
says so, the package phases never run and the service is untouched); the KB's outcome -> host result mapping
(kb_result.yml) runs on localhost with the install result a Windows host would register, like
test_osupdate_role.py does for the KB phase.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from demo.fleet import Fleet
from demo.main_job import playbook_command, playbook_environment
from tests.support.local_play import run_local_playbook
from tests.support.running_fleet import have_wine, running_fleet

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
KB = "C:\\ProgramData\\rebootless\\kb\\windows11.0-kb5099999-x64.msu"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    if not have_wine():
        pytest.skip("needs wine64 and mingw-w64 (make deps)")
    with running_fleet(tmp_path_factory.mktemp("kb-only-fleet"), hosts=1, mismatch_host=0) as fleet:
        yield fleet


def _main_job(fleet: Fleet, report: Path, extra: dict[str, Any]) -> tuple[subprocess.CompletedProcess[str], dict]:
    # hotpatch_package "" overrides the demo's package: nothing is built, nothing is planned.
    cmd = playbook_command(fleet.inventory_path, Path("unused.hpk"), report, {"hotpatch_package": "", **extra})
    done = subprocess.run(cmd, cwd=ROOT, env=playbook_environment(), capture_output=True, text=True, check=False)
    data = (
        json.loads((report / "hotpatch-report.json").read_text()) if (report / "hotpatch-report.json").is_file() else {}
    )
    return done, data


@pytest.mark.wine
def test_a_kb_only_rollout_needs_no_package_and_leaves_the_service_alone(fleet: Fleet, tmp_path: Path) -> None:
    host = fleet.hosts()[0]
    before = (fleet.request(host, "VERSION"), fleet.status(probe=False)["hosts"][0]["services"][0]["pid"])
    done, report = _main_job(fleet, tmp_path / "report", {"hotpatch_kb": KB})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    [entry] = report["hosts"]
    assert entry["result"] == "skipped"
    assert entry["reasons"] == ["KB skipped: Microsoft updates apply to Windows hosts, this one is wine"]
    assert entry["decision"] in ("", None)
    assert "Decide | plan" not in done.stdout and "Apply |" not in done.stdout  # no package phase ran
    assert "pre-health" not in " ".join(entry["reasons"]) and entry["health"], "pre-health still runs and passes"
    after = (fleet.request(host, "VERSION"), fleet.status(probe=False)["hosts"][0]["services"][0]["pid"])
    assert after == before


@pytest.mark.wine
def test_neither_package_nor_kb_fails_the_host_saying_what_to_set(fleet: Fleet, tmp_path: Path) -> None:
    done, report = _main_job(fleet, tmp_path / "report", {})
    assert done.returncode != 0
    [entry] = report["hosts"]
    assert entry["result"] == "failed"
    assert any("nothing to roll out: set hotpatch_package" in r and "hotpatch_kb" in r for r in entry["reasons"])


PLAYBOOK = """\
- hosts: localhost
  gather_facts: false
  vars:
    hotpatch__result: ""
    hotpatch__kb_record: {record}
  tasks:
    - name: Run the phase
      ansible.builtin.include_role:
        name: rebootless.windows.hotpatch
        tasks_from: kb_result
    - name: Show
      ansible.builtin.debug:
        msg: "RESULT={{{{ hotpatch__result }}}}"
"""


def _kb_result(tmp_path: Path, record: dict[str, Any]) -> str:
    book = tmp_path / "play.yml"
    book.write_text(PLAYBOOK.format(record=json.dumps(record)))
    done = run_local_playbook(book, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    [line] = [ln for ln in done.stdout.splitlines() if '"msg": "RESULT=' in ln]
    return line.split("RESULT=", 1)[1].rstrip('"')


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"result": "hotpatched", "reboot_required": False}, "hotpatched"),
        ({"result": "needs_reboot", "reboot_required": True, "reboot": "done", "rebooted": True}, "cold_patched"),
        ({"result": "needs_reboot", "reboot_required": True, "reboot": "deferred"}, "deferred"),
        ({"result": "already_installed", "reboot_required": False}, "skipped"),
        ({"result": "not_applicable", "reboot_required": False}, "skipped"),
        ({"result": "skipped", "reboot_required": False}, "skipped"),
        ({"result": "would_hotpatch", "reboot_required": False}, "would_hotpatch"),
        ({"result": "would_needs_reboot", "reboot_required": True}, "would_cold"),
    ],
)
def test_a_kb_only_host_takes_the_kb_outcome_as_its_result(
    tmp_path: Path, record: dict[str, Any], expected: str
) -> None:
    assert _kb_result(tmp_path, {"path": KB, **record}) == expected
