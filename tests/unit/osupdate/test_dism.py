"""DISM's command line and the meaning of every exit code the KB verbs map."""

from __future__ import annotations

import pytest

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.osupdate.dism import (
    EXIT_CODES,
    dism_add_package_argv,
    outcome_of,
)


@pytest.mark.parametrize(
    ("rc", "result", "symbol"),
    [
        (0, "installed", "ERROR_SUCCESS"),
        (3010, "reboot_required", "ERROR_SUCCESS_REBOOT_REQUIRED"),
        (0x80070BC2, "reboot_required", "HRESULT_FROM_WIN32(ERROR_SUCCESS_REBOOT_REQUIRED)"),
        (1641, "reboot_required", "ERROR_SUCCESS_REBOOT_INITIATED"),
        (0x00240005, "reboot_required", "WU_S_REBOOT_REQUIRED"),
        (0x240006, "already_installed", "WU_S_ALREADY_INSTALLED"),
        (2359302, "already_installed", "WU_S_ALREADY_INSTALLED"),
        (0x80240017, "not_applicable", "WU_E_NOT_APPLICABLE"),
        (0x800F081E, "not_applicable", "CBS_E_NOT_APPLICABLE"),
        (-2146498530, "not_applicable", "CBS_E_NOT_APPLICABLE"),  # the same code as a signed 32-bit int
        (0x800F0922, "failed", "CBS_E_INSTALLERS_FAILED"),
        (0x800F081F, "failed", "CBS_E_SOURCE_MISSING"),
        (0x800F0823, "failed", "CBS_E_NEW_SERVICING_STACK_REQUIRED"),
        (0x800F0826, "failed", "CBS_E_PENDING_VICTIM"),
        (0x800F0827, "failed", "CBS_E_STACK_SHUTDOWN_REQUIRED"),
        (0x800F0828, "failed", "CBS_E_INSUFFICIENT_DISK_SPACE"),
        (0x800F0831, "failed", "CBS_E_STORE_CORRUPTION"),
        (0x80070005, "failed", "E_ACCESSDENIED"),
        (5, "failed", "ERROR_ACCESS_DENIED"),
        (740, "failed", "ERROR_ELEVATION_REQUIRED"),
        (87, "failed", "ERROR_INVALID_PARAMETER"),
        (2, "failed", "ERROR_FILE_NOT_FOUND"),
        (0x80070002, "failed", "ERROR_FILE_NOT_FOUND"),
    ],
)
def test_exit_code_means(rc: int, result: str, symbol: str) -> None:
    outcome = outcome_of(rc)
    assert (outcome.result, outcome.symbol) == (result, symbol)
    assert outcome.ok is (result != "failed")
    assert outcome.reboot_required is (result == "reboot_required")


def test_every_mapped_failure_says_what_to_do() -> None:
    for rc in EXIT_CODES:
        outcome = outcome_of(rc)
        if outcome.result == "failed":
            assert ":" in outcome.message or "run" in outcome.message, outcome


def test_an_unknown_code_fails_with_its_hex_value() -> None:
    outcome = outcome_of(0x80070570)
    assert outcome.result == "failed" and outcome.symbol == "0x80070570"
    assert "0x80070570" in outcome.message and "CBS.log" in outcome.message


def test_the_install_command_is_dism_online_add_package_without_restart() -> None:
    argv = dism_add_package_argv("C:\\ProgramData\\rebootless\\kb\\windows11.0-kb5050009-x64.msu", "C:\\Temp\\kb.log")
    assert argv == [
        "C:\\Windows\\System32\\Dism.exe",
        "/Online",
        "/English",
        "/Add-Package",
        "/PackagePath:C:\\ProgramData\\rebootless\\kb\\windows11.0-kb5050009-x64.msu",
        "/NoRestart",
        "/Quiet",
        "/LogPath:C:\\Temp\\kb.log",
    ]


def test_a_32_bit_python_reaches_the_native_dism_through_sysnative(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROCESSOR_ARCHITEW6432", "AMD64")
    assert dism_add_package_argv("D:\\kb.cab")[0] == "C:\\Windows\\Sysnative\\Dism.exe"
    assert dism_add_package_argv("D:\\kb.cab")[-1] == "/Quiet"  # no /LogPath without a log path
