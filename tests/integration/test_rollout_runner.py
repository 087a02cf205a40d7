"""AWX readiness: playbooks/hotpatch.yml runs unchanged under ansible-runner (the engine AWX uses), writes its
artifacts, and hands the run's totals to AWX through set_stats (the playbook_on_stats event's artifact_data)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import ansible_runner
import pytest

from demo.fleet import Fleet, free_base_port
from demo.main_job import PLAYBOOK, POLICY, REPO_ROOT, build_demo_package, playbook_environment

pytestmark = [pytest.mark.wine, pytest.mark.integration, pytest.mark.slow]


def test_playbook_runs_under_ansible_runner_with_artifacts_and_stats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not (Path("/usr/lib/wine/wine64").exists() and shutil.which("x86_64-w64-mingw32-gcc")):
        pytest.skip("needs wine64 and mingw-w64 (make deps)")
    # ansible-runner finds ansible-playbook on PATH, as in an execution environment.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    fleet = Fleet(tmp_path / "fleet")
    fleet.up(hosts=2, base_port=free_base_port(2), mismatch_host=0)
    try:
        package = build_demo_package(tmp_path / "packages")
        env = playbook_environment()
        (tmp_path / "runner").mkdir()
        result = ansible_runner.run(
            private_data_dir=str(tmp_path / "runner"),
            project_dir=str(REPO_ROOT),
            playbook=str(PLAYBOOK),
            inventory=[str(fleet.inventory_path), str(POLICY)],
            extravars={
                "hotpatch_package": str(package.path),
                "hotpatch_target": "demo_fleet",
                "hotpatch_report_dir": str(tmp_path / "report"),
                "demo_fault_hosts": [],
            },
            envvars={k: env[k] for k in ("ANSIBLE_COLLECTIONS_PATH", "WINEDEBUG", "WINEDLLOVERRIDES")},
            quiet=True,
        )
        versions = [fleet.request(h, "VERSION") for h in fleet.hosts()]
    finally:
        fleet.down()
    assert result.status == "successful", result.stdout.read()[-3000:]
    assert result.rc == 0
    artifacts = Path(result.config.artifact_dir)
    assert (artifacts / "stdout").is_file()
    assert list((artifacts / "job_events").glob("*.json"))
    stats: list[dict[str, Any]] = [e for e in result.events if e.get("event") == "playbook_on_stats"]
    data = stats[-1]["event_data"]["artifact_data"]
    assert data["hotpatch_totals"]["hotpatched"] == 2
    assert data["hotpatch_stopped"] == ""
    assert Path(data["hotpatch_report_files"]["json"]).is_file()
    assert json.loads(Path(data["hotpatch_report_files"]["json"]).read_text())["totals"]["failed"] == 0
    assert versions == ["appcore 1.0.1", "appcore 1.0.1"]
