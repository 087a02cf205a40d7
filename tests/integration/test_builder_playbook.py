"""rebootless.windows.hotpatch_build through ansible-playbook on localhost, building packages from fixture pairs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.package import read_package
from tests.fixtures.pe import build_all

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"

pytestmark = [pytest.mark.integration, pytest.mark.wine, pytest.mark.slow]


def play(tmp_path: Path, args: dict[str, Any], *flags: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run one hotpatch_build task on localhost; returns the process and the task's registered result."""
    out = tmp_path / "result.json"
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        f"    - rebootless.windows.hotpatch_build: {json.dumps(args)}\n"
        "      register: built\n      ignore_errors: true\n"
        f"    - ansible.builtin.copy:\n        content: '{{{{ built | to_json }}}}'\n        dest: {out}\n"
        "      check_mode: false\n      diff: false\n"
    )
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=f"{ROOT / '.collections'}:{ROOT / '.cache' / 'collections'}",
        ANSIBLE_REMOTE_TMP=str(tmp_path / "remote"),
        ANSIBLE_LOCAL_TEMP=str(tmp_path / "local"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
    )
    done = subprocess.run(
        [str(PLAYBOOK), "-i", "localhost,", "-c", "local", str(playbook), *flags],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done, json.loads(out.read_text())


def test_playbook_builds_a_package_and_a_second_run_changes_nothing(tmp_path: Path) -> None:
    pair = build_all()["gcc/new_helper"]
    dest = tmp_path / "fix.hpk"
    args = {
        "base": str(pair.base),
        "patched": str(pair.patched),
        "dest": str(dest),
        "package_id": "new-helper-fix",
        "version": "1.0.0",
    }
    _unused, first = play(tmp_path, args, "--check", "--diff")
    assert first["changed"] is True and not dest.exists()
    _unused, built = play(tmp_path, args)
    assert built["changed"] is True and built["hotpatchable"] is True
    assert built["patched"] == ["compute"] and built["new"] == ["helper_new"] and built["refused"] == []
    package = read_package(str(dest))
    assert package.sha256 == built["sha256"] and package.manifest.package_id == "new-helper-fix"
    _unused, again = play(tmp_path, args)
    assert again["changed"] is False and again["sha256"] == built["sha256"]


def test_playbook_reports_refusals_and_builds_cold_only_when_allowed(tmp_path: Path) -> None:
    pair = build_all()["gcc/data_layout"]
    dest = tmp_path / "fix.hpk"
    args = {
        "base": str(pair.base),
        "patched": str(pair.patched),
        "dest": str(dest),
        "package_id": "layout-fix",
        "version": "2",
    }
    _unused, refused = play(tmp_path, args)
    assert refused["failed"] is True and not dest.exists()
    assert any(r["function"] == "weights" and "writable data" in r["reason"] for r in refused["refused"])
    _unused, cold = play(tmp_path, {**args, "cold_only_ok": True})
    assert cold["changed"] is True and cold["hotpatchable"] is False and cold["patched"] == []
    assert read_package(str(dest)).patched_module == pair.patched.read_bytes()
