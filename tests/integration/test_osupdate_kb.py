"""kb_classify / kb_install end to end, with the registry and DISM/PowerShell as strict fakes and everything else
real: a real cabinet KB opened by cabextract, real PE images with a hot patch table, real installed files.

The fake runner checks the exact argv of each command in order; DISM's fake answer also changes the fake
registry the way servicing would (UBR moves, RebootPending appears), so the verification step reads a real
change rather than a canned result.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.osupdate import pending_reboot, vbs
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.osupdate.cabinet import CabExtractor
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.osupdate.cli import run_kb_file
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.osupdate.facts import NT_CURRENT_VERSION
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.osupdate.kb import (
    KbTools,
    parse_kb_request,
    run_kb,
)
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.osupdate.runner import (
    Completed,
    SubprocessRunner,
)
from tests.fixtures.hotpatch_table import build_image, have_gcab, have_mingw, identity, make_cab
from tests.unit.osupdate.conftest import server_2025
from tests.unit.osupdate.fakes import StrictRegistry, StrictRunner, dword

pytestmark = [
    pytest.mark.skipif(
        not (have_mingw() and have_gcab() and shutil.which("cabextract")),
        reason="needs mingw-w64 gcc, gcab and cabextract (Debian packages)",
    ),
    pytest.mark.integration,
]

BASELINE = 0x67800000
POWERSHELL = "C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe"
VBS_ARGV = [POWERSHELL, "-NoProfile", "-NonInteractive", "-Command", vbs.VBS_QUERY]
WMI_RUNNING = Completed(VBS_ARGV, 0, '{"VirtualizationBasedSecurityStatus":2}')


@pytest.fixture(autouse=True)
def windows_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYSTEMROOT", "C:\\Windows")
    monkeypatch.delenv("PROCESSOR_ARCHITEW6432", raising=False)


@pytest.fixture(scope="module")
def kb(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A hotpatch KB (.msu holding a .cab) for ntfoo.dll of the baseline, and System32 of two hosts."""
    root = tmp_path_factory.mktemp("kb")
    on_baseline = build_image(root / "baseline", "ntfoo.dll", 1, BASELINE)
    behind = build_image(root / "behind", "ntfoo.dll", 0, BASELINE - 0x100000)
    payload = root / "payload"
    build_image(payload / "amd64_hotpatch", "ntfoo.dll", 2, BASELINE + 1, [identity(on_baseline)])
    build_image(payload / "amd64_full", "ntfoo.dll", 2, BASELINE + 2)
    members = ["amd64_hotpatch/ntfoo.dll", "amd64_full/ntfoo.dll"]
    cab = make_cab(root / "Windows11.0-KB5099999-x64.cab", payload, members)
    msu = make_cab(root / "windows11.0-kb5099999-x64.msu", root, [cab.name])
    return {"msu": msu, "baseline": on_baseline.parent, "behind": behind.parent}


def registry(**changes: object) -> StrictRegistry:
    values, absent, absent_keys = server_2025(**changes)  # type: ignore[arg-type]
    return StrictRegistry(values, absent, absent_keys=absent_keys)


def cabextract(argv: list[str]) -> Completed:
    assert argv[:3] == ["cabextract", "-q", "-d"]
    return SubprocessRunner().run(argv, 120)


def dism_argv(msu: Path) -> list[str]:
    return [
        "C:\\Windows\\System32\\Dism.exe",
        "/Online",
        "/English",
        "/Add-Package",
        f"/PackagePath:{msu}",
        "/NoRestart",
        "/Quiet",
        "/LogPath:C:\\Windows\\Logs\\rebootless-kb.log",
    ]


def dism(
    reg: StrictRegistry, rc: int, ubr: int | None = None, reboot_pending: bool = False
) -> Callable[[list[str]], Completed]:
    """DISM's answer, and its effect on the registry."""

    def answer(argv: list[str]) -> Completed:
        if ubr is not None:
            reg.values[(NT_CURRENT_VERSION.lower(), "ubr")] = dword(ubr)
        if reboot_pending:
            key = pending_reboot.CBS_REBOOT_PENDING.lower()
            reg.absent_keys.discard(key)
            reg.keys.add(key)
        return Completed(argv, rc, "Deployment Image Servicing and Management tool\r\nThe operation completed.\r\n")

    return answer


def expect_extract(runner: StrictRunner, kb: dict[str, Path], work: Path) -> None:
    """cabextract of the .msu into <work>/rebootless-kb-*/0, then of the .cab inside it into <its path>.d."""

    def msu(argv: list[str]) -> bool:
        dest = Path(argv[3])
        return (
            argv[:3] == ["cabextract", "-q", "-d"]
            and argv[4] == str(kb["msu"])
            and dest.name == "0"
            and dest.parent.parent == work
            and dest.parent.name.startswith("rebootless-kb-")
        )

    def cab(argv: list[str]) -> bool:
        return argv[:3] == ["cabextract", "-q", "-d"] and argv[3] == argv[4] + ".d" and argv[4].startswith(str(work))

    runner.expect_like(["cabextract", "-q", "-d", "<work>/rebootless-kb-*/0", str(kb["msu"])], msu, cabextract)
    runner.expect_like(["cabextract", "-q", "-d", "<inner>.cab.d", "<inner>.cab"], cab, cabextract)


def tools(reg: StrictRegistry, runner: StrictRunner, work: Path) -> KbTools:
    return KbTools(reg, runner, CabExtractor(runner), str(work))


def request(kb: dict[str, Path], host: str, state_dir: Path) -> dict[str, object]:
    """``state_dir`` holds the host lock kb_install takes: a test's own, never the machine's default."""
    return {
        "path": str(kb["msu"]),
        "system_dirs": [str(kb[host])],
        "log_path": "C:\\Windows\\Logs\\rebootless-kb.log",
        "arch": "AMD64",
        "state_dir": str(state_dir),
    }


def run(
    kb: dict[str, Path], tmp_path: Path, verb: str, host: str, reg: StrictRegistry, runner: StrictRunner
) -> tuple[int, dict]:
    state_dir = tmp_path / "state"
    code, result = run_kb(parse_kb_request(verb, request(kb, host, state_dir)), tools(reg, runner, tmp_path))
    runner.assert_done()
    # The extraction directory is gone; kb_install took the host lock in the request's state_dir, kb_classify none.
    assert [p.name for p in tmp_path.iterdir()] == (["state"] if verb == "kb_install" else [])
    if verb == "kb_install":
        assert [p.name for p in state_dir.iterdir()] == ["engine.lock"]
    return code, result


def test_check_mode_classifies_and_runs_no_dism(kb: dict[str, Path], tmp_path: Path) -> None:
    reg, runner = registry(), StrictRunner()
    runner.expect(VBS_ARGV, WMI_RUNNING)
    expect_extract(runner, kb, tmp_path)
    code, result = run(kb, tmp_path, "kb_classify", "baseline", reg, runner)
    assert code == 0 and result["ok"] is True
    assert (result["result"], result["changed"], result["dism"]) == ("would_hotpatch", False, None)
    assert result["predicted"]["verdict"] == "hotpatch"
    assert result["predicted"]["counts"] == {"hotpatch": 1, "covered": 1}


def test_a_hotpatch_kb_installs_without_reboot_and_the_ubr_moves(kb: dict[str, Path], tmp_path: Path) -> None:
    reg, runner = registry(), StrictRunner()
    runner.expect(VBS_ARGV, WMI_RUNNING)
    expect_extract(runner, kb, tmp_path)
    runner.expect(dism_argv(kb["msu"]), dism(reg, 0, ubr=2965))
    runner.expect(VBS_ARGV, WMI_RUNNING)
    code, result = run(kb, tmp_path, "kb_install", "baseline", reg, runner)
    assert code == 0
    assert (result["result"], result["changed"]) == ("hotpatched", True)
    assert (result["facts"]["ubr"], result["facts_after"]["ubr"]) == (2894, 2965)
    assert result["facts_after"]["pending_reboot"] is False
    assert result["dism"]["symbol"] == "ERROR_SUCCESS"
    assert result["reasons"] == ["installed with no restart pending; UBR 2894 -> 2965"]


def test_a_host_behind_the_baseline_is_predicted_and_confirmed_to_need_a_reboot(
    kb: dict[str, Path], tmp_path: Path
) -> None:
    reg, runner = registry(), StrictRunner()
    runner.expect(VBS_ARGV, WMI_RUNNING)
    expect_extract(runner, kb, tmp_path)
    runner.expect(dism_argv(kb["msu"]), dism(reg, 3010, reboot_pending=True))
    runner.expect(VBS_ARGV, WMI_RUNNING)
    code, result = run(kb, tmp_path, "kb_install", "behind", reg, runner)
    assert code == 0
    assert (result["result"], result["changed"]) == ("needs_reboot", True)
    assert result["predicted"]["verdict"] == "needs_reboot"
    assert result["facts_after"]["pending_reboot_reasons"] == ["component_servicing"]
    assert result["reasons"] == [
        "installed; a restart completes it",
        "reboot pending after install: component_servicing",
    ]


def test_exit_0_with_a_reboot_pending_afterwards_still_needs_a_reboot(kb: dict[str, Path], tmp_path: Path) -> None:
    reg, runner = registry(), StrictRunner()
    runner.expect(VBS_ARGV, WMI_RUNNING)
    expect_extract(runner, kb, tmp_path)
    runner.expect(dism_argv(kb["msu"]), dism(reg, 0, reboot_pending=True))
    runner.expect(VBS_ARGV, WMI_RUNNING)
    code, result = run(kb, tmp_path, "kb_install", "baseline", reg, runner)
    assert (code, result["result"]) == (0, "needs_reboot")
    assert "the KB was predicted to hotpatch; Windows asked for a restart anyway" in result["reasons"]


@pytest.mark.parametrize(
    ("rc", "expected"),
    [(0x240006, "already_installed"), (0x800F081E, "not_applicable"), (0x80240017, "not_applicable")],
)
def test_already_installed_and_not_applicable_change_nothing(
    kb: dict[str, Path], tmp_path: Path, rc: int, expected: str
) -> None:
    reg, runner = registry(), StrictRunner()
    runner.expect(VBS_ARGV, WMI_RUNNING)
    expect_extract(runner, kb, tmp_path)
    runner.expect(dism_argv(kb["msu"]), dism(reg, rc))
    code, result = run(kb, tmp_path, "kb_install", "baseline", reg, runner)
    assert (code, result["result"], result["changed"], result["facts_after"]) == (0, expected, False, None)


def test_a_failed_install_exits_1_with_what_to_do(kb: dict[str, Path], tmp_path: Path) -> None:
    reg, runner = registry(), StrictRunner()
    runner.expect(VBS_ARGV, WMI_RUNNING)
    expect_extract(runner, kb, tmp_path)
    runner.expect(dism_argv(kb["msu"]), dism(reg, 0x800F0823))
    code, result = run(kb, tmp_path, "kb_install", "baseline", reg, runner)
    assert (code, result["ok"], result["result"], result["changed"]) == (1, False, "failed", False)
    assert result["reasons"] == [
        "DISM: the package needs a newer servicing stack: install the servicing stack update (SSU) first "
        "(CBS_E_NEW_SERVICING_STACK_REQUIRED, exit 2148468771)"
    ]


def test_a_missing_kb_file_is_a_request_error_before_any_tool_runs(kb: dict[str, Path], tmp_path: Path) -> None:
    reg, runner = registry(), StrictRunner()
    runner.expect(VBS_ARGV, WMI_RUNNING)  # facts come first: they are reported even when the request fails
    data = request(kb, "baseline", tmp_path / "state") | {"path": str(tmp_path / "nope.msu")}
    code, result = run_kb(parse_kb_request("kb_install", data), tools(reg, runner, tmp_path))
    runner.assert_done()
    assert code == 2 and result["error"]["kind"] == "request"
    assert "copy it to the host first" in result["error"]["message"]


def test_the_command_line_entry_refuses_a_non_windows_host(kb: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "request.json"
    path.write_text(json.dumps({"path": "C:\\kb.msu", "state_dir": str(tmp_path / "state")}))
    code, result = run_kb_file("kb_install", str(path))
    assert code == 7 and result["error"]["kind"] == "backend"
    assert "need a Windows host" in result["error"]["message"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "needs 'path'"),
        ({"path": "C:\\kb.msu", "reboot": True}, "unknown request keys reboot"),
        ({"path": "C:\\kb.msu", "timeout_s": 0}, "timeout_s must be"),
        ({"path": "C:\\kb.msu", "system_dirs": "C:\\Windows"}, "system_dirs must be"),
    ],
)
def test_bad_requests_are_refused_with_the_key_named(tmp_path: Path, data: dict[str, object], message: str) -> None:
    path = tmp_path / "request.json"
    path.write_text(json.dumps(data))
    code, result = run_kb_file("kb_install", str(path), tools=KbTools(StrictRegistry({}), StrictRunner()))
    assert code == 2 and message in result["error"]["message"]
