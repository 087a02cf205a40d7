"""OS-update facts read through a strict registry and a strict command runner (no Windows here)."""

from __future__ import annotations

import subprocess

import pytest

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.osupdate import pending_reboot, vbs
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.osupdate.facts import osupdate_facts
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.osupdate.runner import Completed

from .conftest import HOTPATCH_ARM64, MM, server_2025
from .fakes import StrictRegistry, StrictRunner, StrictViolation, dword, multi_sz, sz

POWERSHELL = "C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe"
VBS_ARGV = [POWERSHELL, "-NoProfile", "-NonInteractive", "-Command", vbs.VBS_QUERY]


def wmi(status: int) -> Completed:
    return Completed(VBS_ARGV, 0, f'{{"VirtualizationBasedSecurityStatus":{status}}}\r\n')


def host(absent_keys_extra: tuple[str, ...] = (), keys: tuple[str, ...] = (), **changes: object) -> StrictRegistry:
    values, absent, absent_keys = server_2025(**changes)  # type: ignore[arg-type]
    absent_keys = [k for k in absent_keys if k not in keys] + list(absent_keys_extra)
    return StrictRegistry(values, absent, keys=keys, absent_keys=absent_keys)


def runner_with(*answers: Completed | BaseException) -> StrictRunner:
    runner = StrictRunner()
    for answer in answers:
        runner.expect(VBS_ARGV, answer)
    return runner


def test_an_enrolled_server_with_vbs_running_is_ready_for_hotpatches() -> None:
    runner = runner_with(wmi(2))
    facts = osupdate_facts(host(), runner, "AMD64").as_dict()
    runner.assert_done()
    assert facts == {
        "product_name": "Windows Server 2025 Datacenter Azure Edition",
        "current_build": "26100",
        "ubr": 2894,
        "edition_id": "ServerDatacenterAzure",
        "display_version": "24H2",
        "os_build": "26100.2894",
        "vbs": "running",
        "vbs_status": 2,
        "vbs_source": "wmi",
        "vbs_error": None,
        "enrolment": "enrolled",
        "hotpatch_enrolment": {
            "state": "enrolled",
            "arch": "amd64",
            "package_name": "Hotpatch Enrollment Package",
            "package_version": "10.0.26100.2894",
            "hotpatch_table_size": 4096,
            "rebootless_policy": None,
            "chpe_disabled": None,
        },
        "pending_reboot": False,
        "pending_reboot_reasons": [],
        "pending_reboot_optional": [],
        "hotpatch_ready": True,
        "hotpatch_blockers": [],
    }


def test_vbs_enabled_but_not_running_blocks_hotpatches() -> None:
    facts = osupdate_facts(host(), runner_with(wmi(1)), "AMD64").as_dict()
    assert facts["vbs"] == "enabled"
    assert facts["hotpatch_ready"] is False
    assert facts["hotpatch_blockers"] == ["VBS is not running (enabled): enable it and reboot"]


def test_when_powershell_fails_vbs_falls_back_to_the_configured_registry_value_and_says_why() -> None:
    failed = Completed(VBS_ARGV, 1, "", "Get-CimInstance : Invalid namespace")
    facts = osupdate_facts(host(), runner_with(failed), "AMD64").as_dict()
    assert (facts["vbs"], facts["vbs_status"], facts["vbs_source"]) == ("configured", None, "registry")
    assert "Invalid namespace" in facts["vbs_error"]
    assert facts["hotpatch_blockers"][0].startswith("VBS is not running (configured)")


def test_powershell_missing_and_no_vbs_configuration_means_vbs_unknown() -> None:
    registry = host(EnableVirtualizationBasedSecurity=None)
    facts = osupdate_facts(registry, runner_with(FileNotFoundError(2, "not found")), "AMD64").as_dict()
    assert facts["vbs"] is None and facts["vbs_source"] is None
    assert "cannot run powershell" in facts["vbs_error"]


def test_a_wmi_timeout_is_reported_not_raised() -> None:
    timeout = subprocess.TimeoutExpired(VBS_ARGV, 60)
    facts = osupdate_facts(host(), runner_with(timeout), "AMD64").as_dict()
    assert facts["vbs"] == "configured" and "timed out" in facts["vbs_error"]


def test_a_client_enrolled_by_the_rebootless_policy_counts_as_enrolled() -> None:
    registry = host(
        HotpatchName=None,
        AllowRebootlessUpdates=dword(1),
        ProductName=sz("Windows 10 Enterprise"),  # Windows 11 still reports "Windows 10" in ProductName
        EditionID=sz("Enterprise"),
    )
    facts = osupdate_facts(registry, runner_with(wmi(2)), "AMD64").as_dict()
    assert facts["enrolment"] == "enrolled"
    assert facts["hotpatch_enrolment"]["rebootless_policy"] is True
    assert facts["hotpatch_enrolment"]["package_name"] is None


def test_a_server_without_the_targeting_package_is_not_enrolled() -> None:
    registry = host(HotpatchName=None, HotPatchTableSize=None)
    facts = osupdate_facts(registry, runner_with(wmi(2)), "AMD64").as_dict()
    assert facts["enrolment"] == "not_enrolled"
    assert facts["hotpatch_enrolment"]["hotpatch_table_size"] is None
    assert any("not enrolled" in b for b in facts["hotpatch_blockers"])


def test_arm64_reads_its_own_targeting_key_and_needs_chpe_disabled() -> None:
    values, absent, absent_keys = server_2025(HotpatchName=None, HotpatchVersion=None)
    values[(HOTPATCH_ARM64, "Name")] = sz("Hotpatch Enrollment Package")
    values[(HOTPATCH_ARM64, "Version")] = sz("10.0.26100.2894")
    registry = StrictRegistry(values, absent, absent_keys=absent_keys)
    facts = osupdate_facts(registry, runner_with(wmi(2)), "ARM64").as_dict()
    assert facts["hotpatch_enrolment"]["arch"] == "arm64"
    assert facts["hotpatch_enrolment"]["chpe_disabled"] is False
    assert facts["hotpatch_blockers"] == ["Arm64 with CHPE in use: set HotPatchRestrictions=1 and reboot"]
    values[(MM, "HotPatchRestrictions")] = dword(1)
    ready = StrictRegistry(values, [a for a in absent if a != (MM, "HotPatchRestrictions")], absent_keys=absent_keys)
    assert osupdate_facts(ready, runner_with(wmi(2)), "ARM64").as_dict()["hotpatch_ready"] is True


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (pending_reboot.CBS_REBOOT_PENDING, "component_servicing"),
        (pending_reboot.WU_REBOOT_REQUIRED, "windows_update"),
        (pending_reboot.NETLOGON_JOIN_DOMAIN, "domain_join"),
        (pending_reboot.NETLOGON_AVOID_SPN_SET, "domain_join"),
    ],
)
def test_each_servicing_key_is_a_pending_reboot_with_its_reason(key: str, reason: str) -> None:
    facts = osupdate_facts(host(keys=(key,)), runner_with(wmi(2)), "AMD64").as_dict()
    assert facts["pending_reboot"] is True
    assert facts["pending_reboot_reasons"] == [reason]
    assert facts["hotpatch_blockers"] == [f"a reboot is pending: {reason}"]


def test_a_renamed_computer_is_a_pending_reboot_but_a_case_difference_is_not() -> None:
    renamed = host(ComputerName=sz("WEB02"))
    assert osupdate_facts(renamed, runner_with(wmi(2)), "AMD64").reboot.reasons == ["computer_rename"]
    same = host(ComputerName=sz("web01"))
    assert osupdate_facts(same, runner_with(wmi(2)), "AMD64").reboot.reasons == []


def test_pending_file_renames_are_reported_as_optional_only() -> None:
    registry = host(PendingFileRenameOperations=multi_sz("\\??\\C:\\Temp\\old.dll", "", "\\??\\C:\\x.tmp", ""))
    facts = osupdate_facts(registry, runner_with(wmi(2)), "AMD64").as_dict()
    assert facts["pending_reboot"] is False
    assert facts["pending_reboot_optional"] == ["file_rename_operations"]
    assert facts["hotpatch_ready"] is True
    empty = host(PendingFileRenameOperations=multi_sz(""))
    assert osupdate_facts(empty, runner_with(wmi(2)), "AMD64").reboot.optional == []


def test_the_strict_registry_rejects_a_read_the_test_did_not_declare() -> None:
    registry = StrictRegistry({})
    with pytest.raises(StrictViolation, match="undeclared registry read"):
        osupdate_facts(registry, runner_with(wmi(2)), "AMD64")


def test_the_strict_registry_checks_value_types() -> None:
    with pytest.raises(StrictViolation, match="malformed"):
        StrictRegistry({("K", "V"): dword(1).__class__(4, "not a number")})
