"""The role's decision table (hotpatch / cold / skip / fail) and the wave gate's notion of a failed host."""

from __future__ import annotations

from typing import Any

import pytest

from ansible_collections.rebootless.windows.plugins.filter.hotpatch_decide import FilterModule, decide, hotpatch_decide
from ansible_collections.rebootless.windows.plugins.filter.hotpatch_wave_failures import (
    hotpatch_wave_failures,
    is_failure,
)

PACKAGE = {
    "id": "appcore-cve-fix",
    "version": "2.0.0",
    "module": "appcore.dll",
    "sha256": "ab" * 32,
    "hotpatchable": True,
}


def plan(*results: str, **extra: Any) -> dict[str, Any]:
    """A check-mode win_hotpatch result shaped like docs/engine-protocol.md."""
    processes = [
        {
            "pid": 100 + i,
            "name": "appsvc.exe",
            "result": r,
            "code_before": "patched" if r == "already_patched" else "base",
        }
        for i, r in enumerate(results)
    ]
    return {
        "changed": False,
        "package": dict(PACKAGE),
        "processes": processes,
        "cold_patch_required": False,
        "reasons": [],
        **extra,
    }


def test_running_base_code_is_hotpatched() -> None:
    d = decide({}, plan("would_patch", "would_patch"))
    assert (d.action, d.row) == ("hotpatch", 8)
    assert d.reason.startswith("2 process(es) to hotpatch")


def test_already_applied_everywhere_is_skipped() -> None:
    d = decide({}, plan("already_patched", "already_patched"))
    assert (d.action, d.row) == ("skip", 2)
    assert "already applied" in d.reason


def test_already_applied_by_loading_the_staged_module_says_it_was_the_cold_patch() -> None:
    staged = {"package": PACKAGE["id"], "version": "2.0.0", "path": "C:\\App\\appcore.dll", "state": "staged"}
    facts = {"staged": [staged], "processes": [{"pid": 100, "module_path": "c:/app/APPCORE.dll"}]}
    d = decide(facts, plan("already_patched"))
    assert (d.action, d.row) == ("skip", 2)
    assert d.reason == "already applied: 1 process(es) run the cold-patched module (staged C:\\App\\appcore.dll loaded)"
    # Staged but the process loaded another file (hotpatched in memory before the staging): no cold-patch claim.
    facts["processes"][0]["module_path"] = "C:\\Other\\appcore.dll"
    assert decide(facts, plan("already_patched")).reason == "already applied in 1 process(es)"


def test_partly_applied_host_is_hotpatched_for_the_rest() -> None:
    d = decide({}, plan("already_patched", "would_patch"))
    assert d.action == "hotpatch"
    assert "1 already patched" in d.reason


def test_base_image_mismatch_goes_cold_with_the_engine_reason() -> None:
    reason = "appsvc.exe (pid 103): appcore.dll TimeDateStamp 0x65f20000 is not the pinned base 0x65f00000"
    d = decide({}, plan("refused", cold_patch_required=True, reasons=[reason]))
    assert (d.action, d.row) == ("cold", 6)
    assert d.reason == reason


def test_plan_failing_only_because_a_process_was_refused_goes_cold() -> None:
    reason = "appsvc.exe (pid 100): appcore.dll is not the pinned base image: use the cold path"
    p = plan("refused", cold_patch_required=True, reasons=[reason], failed=True, engine_rc=1, msg="plan: 1 of 1 ...")
    assert decide({}, p).action == "cold"
    p["cold_patch_required"] = False
    assert decide({}, p).action == "fail"


def test_staged_entry_nested_in_a_journal_record_counts() -> None:
    facts = {"staged": [{"path": "x/appcore.dll", "package": {"id": PACKAGE["id"], "sha256": PACKAGE["sha256"]}}]}
    after_restart = plan("refused", cold_patch_required=True)
    after_restart["processes"][0]["code_before"] = "unknown"
    assert decide(facts, after_restart).action == "skip"


def test_cold_only_package_goes_cold() -> None:
    p = plan("would_patch", reasons=["fee: data layout changed"])
    p["package"]["hotpatchable"] = False
    d = decide({}, p)
    assert d.action == "cold"
    assert d.reason.startswith("package is cold-only: fee: data layout changed")


def test_staged_patch_with_no_base_code_running_is_skipped() -> None:
    facts = {"staged": [{"id": PACKAGE["id"], "sha256": PACKAGE["sha256"]}]}
    after_restart = plan("refused", cold_patch_required=True)
    after_restart["processes"][0]["code_before"] = "unknown"
    d = decide(facts, after_restart)
    assert (d.action, d.row) == ("skip", 3)


def test_staged_but_base_code_still_running_is_not_skipped() -> None:
    facts = {"staged": [{"id": PACKAGE["id"], "sha256": PACKAGE["sha256"]}]}
    assert decide(facts, plan("would_patch")).action == "hotpatch"


def test_staged_entry_as_the_engine_journals_it_counts() -> None:
    facts = {"staged": [{"package": PACKAGE["id"], "version": "2.0.0", "path": "x/appcore.dll", "state": "staged"}]}
    after_restart = plan("refused", cold_patch_required=True)
    after_restart["processes"][0]["code_before"] = "unknown"
    assert decide(facts, after_restart).action == "skip"
    facts["staged"][0]["version"] = "1.9.0"
    assert decide(facts, after_restart).action == "cold"


def test_staged_entry_of_another_build_does_not_count() -> None:
    facts = {"staged": [{"id": PACKAGE["id"], "sha256": "cd" * 32}]}
    d = decide(facts, plan("refused", cold_patch_required=True))
    assert d.action == "cold"


def test_force_cold_policy_wins_over_a_possible_hotpatch() -> None:
    d = decide({}, plan("would_patch"), force_cold=True)
    assert (d.action, d.row) == ("cold", 4)


def test_earlier_rollback_on_this_host_goes_cold_unless_retry_is_asked() -> None:
    marker = {"package": PACKAGE, "reason": "post-health failed: VERSION pin", "at": "2026-12-01T00:00:00Z"}
    d = decide({}, plan("would_patch"), marker=marker)
    assert (d.action, d.row) == ("cold", 5)
    assert "rolled back here at 2026-12-01T00:00:00Z (post-health failed: VERSION pin)" in d.reason
    assert decide({}, plan("would_patch"), marker=marker, retry_rolled_back=True).action == "hotpatch"


def test_no_process_loading_the_module_goes_cold() -> None:
    d = decide({}, plan())
    assert (d.action, d.row) == ("cold", 7)


@pytest.mark.parametrize(
    "failure", [{"failed": True, "msg": "signature rejected: unknown key"}, {"failed": True, "reasons": ["lock busy"]}]
)
def test_plan_refused_as_a_whole_fails_the_host_instead_of_going_cold(failure: dict[str, Any]) -> None:
    d = decide({}, failure)
    assert (d.action, d.row) == ("fail", 1)
    assert d.reason.startswith("plan failed: ")


def test_jinja_entry_returns_a_plain_mapping_and_tolerates_junk() -> None:
    assert hotpatch_decide(plan("would_patch"), None, False, None, False)["action"] == "hotpatch"
    assert hotpatch_decide("not a plan")["action"] == "cold"
    assert FilterModule().filters()["hotpatch_decide"] is hotpatch_decide


class _HostVars(dict[str, dict[str, Any]]):
    """Ansible's hostvars behave as a mapping of host -> mapping; a dict is enough here."""


def test_wave_failures_count_failed_missing_and_rolled_back_hosts() -> None:
    hostvars = _HostVars(
        a={"hotpatch_record": {"result": "hotpatched"}},
        b={"hotpatch_record": {"result": "failed"}},
        c={"hotpatch_record": {"result": "deferred", "rolled_back": True}},
        d={},
    )
    assert hotpatch_wave_failures(["a", "b", "c", "d", "e"], hostvars) == ["b", "c", "d", "e"]
    assert hotpatch_wave_failures(["a", "b", "c"], hostvars, False) == ["b"]
    assert is_failure({"result": "cold_patched"}) is False
