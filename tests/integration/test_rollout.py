"""The main job end to end on the demo fleet: real appsvc.exe/appcore.dll under Wine, a package built by the patch
builder (v1 -> v2), the engine patching live processes, ansible-playbook running playbooks/hotpatch.yml with the
demo policy while the load generator runs.

One fleet (4 hosts; demo-host-3 runs another appcore build; demo-host-4's owners pin a post-check to a version that
does not exist) goes through: check mode (nothing changes), the rollout under load, and a re-run (nothing changes).
A second fleet shows a failing canary wave stopping the rollout.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from demo.fleet import SERVICE_DIR, Fleet, free_base_port
from demo.main_job import run_main_job, run_playbook
from tests.support.running_fleet import have_wine

pytestmark = [pytest.mark.wine, pytest.mark.integration, pytest.mark.slow]

# The secrets appcore v1 leaks on GET 5..7 (demo/service/appcore.c): none may reach a report.
SECRETS = ("APIKEY-7f3a9c1e-prod-billing", "APIKEY-52d0b8aa-prod-ledger", "APIKEY-c41e77f0-prod-admin")
RECAP = re.compile(
    r"^(?P<host>\S+)\s+: ok=\d+\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)",
    re.M,
)


@dataclass
class Snapshot:
    """What a host looks like from outside: its service PID, answers, and the module file on disk."""

    pid: int | None
    version: str
    get5_leaks: bool
    module_sha256: str


def snapshot(fleet: Fleet) -> dict[str, Snapshot]:
    out = {}
    for host in fleet.status(probe=False)["hosts"]:
        name = host["name"]
        module = Path(host["dir"]) / SERVICE_DIR / "appcore.dll"
        out[name] = Snapshot(
            pid=host["services"][0]["pid"],
            version=fleet.request(name, "VERSION"),
            get5_leaks=fleet.request(name, "GET 5").startswith("APIKEY"),
            module_sha256=hashlib.sha256(module.read_bytes()).hexdigest(),
        )
    return out


def recap(output: str) -> dict[str, dict[str, int]]:
    return {m["host"]: {k: int(m[k]) for k in ("changed", "unreachable", "failed")} for m in RECAP.finditer(output)}


def load_report(report_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((report_dir / "hotpatch-report.json").read_text(encoding="utf-8"))
    return data


def by_host(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {h["host"]: h for h in report["hosts"]}


@dataclass
class Rollout:
    fleet: Fleet
    inventory: Path
    before: dict[str, Snapshot]
    check_output: str
    check_report: dict[str, Any]
    after_check: dict[str, Snapshot]
    rc: int
    report: dict[str, Any]
    report_dir: Path
    after: dict[str, Snapshot]
    rerun_output: str
    rerun_report: dict[str, Any]
    after_rerun: dict[str, Snapshot]


@pytest.fixture(scope="module")
def rollout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rollout]:
    if not have_wine():
        pytest.skip("needs wine64 and mingw-w64 (make deps)")
    root = tmp_path_factory.mktemp("rollout-fleet")
    fleet = Fleet(root)
    fleet.up(hosts=4, base_port=free_base_port(4), mismatch_host=3)
    try:
        inventory = fleet.inventory_path
        before = snapshot(fleet)
        check = run_playbook(inventory, root / "check-report", check=True)
        after_check = snapshot(fleet)
        report_dir = root / "report"
        rc = run_main_job(inventory, report_dir=report_dir, quiet=True, rate=40.0)
        after = snapshot(fleet)
        rerun = run_playbook(inventory, root / "rerun-report")
        yield Rollout(
            fleet=fleet,
            inventory=inventory,
            before=before,
            check_output=check.stdout + check.stderr,
            check_report=load_report(root / "check-report"),
            after_check=after_check,
            rc=rc,
            report=load_report(report_dir),
            report_dir=report_dir,
            after=after,
            rerun_output=rerun.stdout + rerun.stderr,
            rerun_report=load_report(root / "rerun-report"),
            after_rerun=snapshot(fleet),
        )
    finally:
        fleet.down()


def test_check_mode_changes_nothing_and_says_what_would_happen(rollout: Rollout) -> None:
    # Check mode reports what WOULD change (Ansible's convention); the hosts themselves must be untouched.
    assert rollout.after_check == rollout.before
    assert all(h["failed"] == 0 for h in recap(rollout.check_output).values()), rollout.check_output[-3000:]
    hosts = by_host(rollout.check_report)
    assert rollout.check_report["check_mode"] is True
    assert {h: hosts[h]["result"] for h in hosts} == {
        "demo-host-1": "would_hotpatch",
        "demo-host-2": "would_hotpatch",
        "demo-host-3": "would_cold",
        "demo-host-4": "would_hotpatch",
    }


def test_matching_hosts_are_hotpatched_in_place_under_load_with_zero_failed_requests(rollout: Rollout) -> None:
    hosts = by_host(rollout.report)
    for name in ("demo-host-1", "demo-host-2"):
        assert hosts[name]["result"] == "hotpatched"
        assert hosts[name]["decision"] == "hotpatch"
        assert hosts[name]["pause_us_max"] > 0
        assert all(c["ok"] for c in hosts[name]["health"])
        assert {c["phase"] for c in hosts[name]["health"]} == {"pre", "post"}
        # The reason is the outcome (which process, how long it paused, how post-health went), not the plan.
        post = sum(1 for c in hosts[name]["health"] if c["phase"] == "post")
        assert hosts[name]["reasons"] == [
            f"hotpatched 1 process (pid {rollout.before[name].pid}), pause {hosts[name]['pause_us_max']} µs",
            f"post-health {post}/{post} passed",
        ]
        # Same process (no restart), new code: the fix is live and the leak is gone.
        assert rollout.after[name].pid == rollout.before[name].pid
        assert rollout.after[name].version == "appcore 1.0.1"
        assert rollout.after[name].get5_leaks is False
        assert rollout.after[name].module_sha256 == rollout.before[name].module_sha256
    assert [w["hosts"] for w in rollout.report["waves"]] == [
        ["demo-host-1"],
        ["demo-host-2"],
        ["demo-host-3", "demo-host-4"],
    ]
    load = rollout.report["loadgen"]["groups"]
    assert load["hotpatched"]["sent"] > 0
    assert load["hotpatched"]["failed"] == 0


def test_host_failing_post_health_is_rolled_back_and_its_cold_path_deferred(rollout: Rollout) -> None:
    host = by_host(rollout.report)["demo-host-4"]
    assert host["decision"] == "hotpatch"
    assert host["rolled_back"] is True
    assert host["result"] == "deferred"
    failed = [c for c in host["health"] if not c["ok"]]
    assert [(c["phase"], c["name"]) for c in failed] == [("post", "owner's version pin (appcore 1.0.2)")]
    assert all(c["ok"] for c in host["health"] if c["phase"] == "rollback")
    assert any("maintenance window closed, next opening" in r for r in host["reasons"])
    # The rollback's reason names the check and what it saw, with the pattern as the policy wrote it.
    assert [r for r in host["reasons"] if r.startswith("post-health failed:")] == [
        r"post-health failed: owner's version pin (appcore 1.0.2): answer does not match /^appcore 1\.0\.2$/"
    ]
    # Deferred, not failed; rolled back, so the wave gate counts it: the waves table and the totals agree.
    [wave3] = [w for w in rollout.report["waves"] if "demo-host-4" in w["hosts"]]
    assert (wave3["failed_results"], wave3["rolled_back"], wave3["failed"]) == (0, 1, ["demo-host-4"])
    assert rollout.report["totals"]["failed"] == sum(w["failed_results"] for w in rollout.report["waves"])
    # Rolled back in the same process: the old code answers again, nothing was restarted or staged.
    after = rollout.after["demo-host-4"]
    assert after.pid == rollout.before["demo-host-4"].pid
    assert after.version == "appcore 1.0.0"
    assert after.module_sha256 == rollout.before["demo-host-4"].module_sha256


def test_mismatched_build_is_not_hotpatched(rollout: Rollout) -> None:
    host = by_host(rollout.report)["demo-host-3"]
    assert host["decision"] == "cold"
    assert "not the base image the package patches" in host["decision_reason"]
    assert not any(p.get("result") == "patched" for p in host["processes"])


def test_mismatched_build_goes_cold_in_its_window_and_the_job_succeeds(rollout: Rollout) -> None:
    host = by_host(rollout.report)["demo-host-3"]
    assert host["result"] == "cold_patched", host["reasons"]
    assert rollout.after["demo-host-3"].version == "appcore 1.0.1"
    assert rollout.after["demo-host-3"].pid != rollout.before["demo-host-3"].pid
    assert rollout.rc == 0
    # The engine's "or use the cold path" advice was followed: the reason drops it and says what the cold path did.
    assert not any("use the cold path" in r for r in host["reasons"]), host["reasons"]
    assert host["reasons"][-1].startswith(
        "cold-patched: patched module staged, restarted AppSvc; health after the cold"
    )


def test_report_files_are_complete_and_hold_no_secret(rollout: Rollout) -> None:
    names = sorted(p.name for p in rollout.report_dir.iterdir())
    assert names == [
        "hotpatch-report.html",
        "hotpatch-report.json",
        "hotpatch-report.junit.xml",
        "hotpatch-report.md",
        "loadgen.json",
    ]
    for path in rollout.report_dir.glob("hotpatch-report.*"):
        text = path.read_text(encoding="utf-8")
        for secret in SECRETS:
            assert secret not in text, f"{secret} in {path.name}"
    html = (rollout.report_dir / "hotpatch-report.html").read_text(encoding="utf-8")
    assert "<svg" in html
    assert "<polyline" in html  # the load generator's p99 line


def test_rerun_changes_nothing(rollout: Rollout) -> None:
    counts = recap(rollout.rerun_output)
    assert set(counts) >= {"demo-host-1", "demo-host-2", "demo-host-3", "demo-host-4"}
    assert all(c["changed"] == 0 for c in counts.values()), rollout.rerun_output[-3000:]
    assert rollout.after_rerun == rollout.after
    hosts = by_host(rollout.rerun_report)
    assert hosts["demo-host-1"]["result"] == hosts["demo-host-2"]["result"] == "skipped"
    assert hosts["demo-host-4"]["result"] == "deferred"
    assert "rolled back here" in hosts["demo-host-4"]["decision_reason"]
    # Host 3 runs the cold-patched module now: the skip says so, unlike the hotpatched hosts' skip.
    assert "run the cold-patched module (staged " in hosts["demo-host-3"]["decision_reason"]
    assert "cold-patched" not in hosts["demo-host-1"]["decision_reason"]


def test_failing_canary_wave_stops_the_rollout(tmp_path: Path) -> None:
    if not have_wine():
        pytest.skip("needs wine64 and mingw-w64 (make deps)")
    fleet = Fleet(tmp_path / "fleet")
    fleet.up(hosts=3, base_port=free_base_port(3), mismatch_host=0)
    try:
        before = snapshot(fleet)
        proc = run_playbook(
            fleet.inventory_path,
            tmp_path / "report",
            extra_vars={"demo_fault_hosts": ["demo-host-1"], "hotpatch_max_fail_percentage": 0},
        )
        after = snapshot(fleet)
    finally:
        fleet.down()
    assert proc.returncode != 0
    assert "0 host(s) failed, 1 rolled back; rollout stopped after wave 1: 1 of 1 host(s) failed" in proc.stdout
    report = load_report(tmp_path / "report")
    hosts = by_host(report)
    assert hosts["demo-host-1"]["rolled_back"] is True
    assert report["stopped"].startswith("wave 1: 1 of 1 host(s) failed")
    assert [hosts[h]["result"] for h in ("demo-host-2", "demo-host-3")] == ["not_run", "not_run"]
    assert len(report["waves"]) == 1
    for name in ("demo-host-2", "demo-host-3"):
        assert after[name] == before[name]  # never touched
    junit = (tmp_path / "report" / "hotpatch-report.junit.xml").read_text(encoding="utf-8")
    assert 'type="rollout_stopped"' in junit


def test_forced_cold_path_restarts_or_reboots_inside_the_window_and_then_stays_put(tmp_path: Path) -> None:
    if not have_wine():
        pytest.skip("needs wine64 and mingw-w64 (make deps)")
    fleet = Fleet(tmp_path / "fleet")
    fleet.up(hosts=2, base_port=free_base_port(2), mismatch_host=0)
    policy = {
        "demo_fault_hosts": [],
        "hotpatch_force_cold": True,
        # Extra vars are templated per host: host 1 restarts its service, host 2 reboots.
        "hotpatch_cold_action": "{{ 'reboot' if inventory_hostname == 'demo-host-2' else 'restart_services' }}",
    }
    try:
        before = snapshot(fleet)
        boots_before = {h["name"]: h["boots"] for h in fleet.status(probe=False)["hosts"]}
        first = run_playbook(fleet.inventory_path, tmp_path / "first", extra_vars=policy)
        after = snapshot(fleet)
        boots_after = {h["name"]: h["boots"] for h in fleet.status(probe=False)["hosts"]}
        second = run_playbook(fleet.inventory_path, tmp_path / "second", extra_vars=policy)
        again = snapshot(fleet)
    finally:
        fleet.down()
    assert first.returncode == 0, first.stdout[-3000:]
    hosts = by_host(load_report(tmp_path / "first"))
    for name in ("demo-host-1", "demo-host-2"):
        assert hosts[name]["decision"] == "cold"
        assert hosts[name]["result"] == "cold_patched", hosts[name]["reasons"]
        assert any(r.startswith("cold path: maintenance window lab (always) open") for r in hosts[name]["reasons"])
        assert all(c["ok"] for c in hosts[name]["health"] if c["phase"] == "cold")
        # New process loading the staged module: the fix, and the module file on disk is the patched one.
        assert after[name].pid != before[name].pid
        assert after[name].version == "appcore 1.0.1"
        assert after[name].get5_leaks is False
        assert after[name].module_sha256 != before[name].module_sha256
    assert boots_after == {"demo-host-1": boots_before["demo-host-1"], "demo-host-2": boots_before["demo-host-2"] + 1}
    # The second run finds the cold patch in place and changes nothing.
    assert second.returncode == 0, second.stdout[-3000:]
    assert all(c["changed"] == 0 for c in recap(second.stdout).values()), second.stdout[-3000:]
    assert {h["result"] for h in load_report(tmp_path / "second")["hosts"]} == {"skipped"}
    assert again == after
