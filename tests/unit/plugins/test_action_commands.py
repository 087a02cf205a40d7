"""The exact commands the engine action base sends under the powershell, cmd and sh shell plugins.

A strict fake connection records every command and transfer and refuses anything it was not told to expect;
PowerShell scripts are decoded from ``-EncodedCommand`` and compared line by line.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from ansible.errors import AnsibleActionFail
from ansible.plugins.loader import shell_loader
from ansible.plugins.shell.cmd import ShellModule as CmdShell

from ansible_collections.rebootless.windows.plugins.action import win_hotpatch, win_hotpatch_facts
from ansible_collections.rebootless.windows.plugins.plugin_utils import _action_base
from ansible_collections.rebootless.windows.plugins.plugin_utils._action_base import PosixCommands, PowerShellCommands
from ansible_collections.rebootless.windows.tests.unit.plugins.action_harness import (
    FakeTask,
    Sent,
    StrictConnection,
    decode_powershell,
    make_action,
    make_package,
    reply,
    sign,
    stub_engine,
)

WIN_TMP = "C:\\Windows\\TEMP\\ansible-tmp-1-1"
SH_TMP = "/tmp/ans/ansible-tmp-1-1"


@pytest.fixture
def engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    archive = stub_engine(tmp_path)
    monkeypatch.setattr(_action_base, "engine_archive", lambda: archive)
    return archive


@pytest.fixture
def package(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "fix.hpk"
    return path, make_package(path)


class Host:
    """Scripted answers: probe digests and dir state, the engine's reply and exit code."""

    def __init__(
        self, windows: bool, digests: list[str], dir_state: str = "ok", rc: int = 0, document: str = ""
    ) -> None:
        self.windows, self.digests, self.dir_state, self.rc, self.document = windows, digests, dir_state, rc, document

    def __call__(self, sent: Sent) -> tuple[int, str, str]:
        text = sent.script if self.windows else sent.command
        assert text is not None, f"not an encoded PowerShell command: {sent.command[:80]}"
        if "Get-FileHash" in text or "hashlib" in text:
            return 0, "\n".join([f"dir:{self.dir_state}", "python:ok", *self.digests]) + "\n", ""
        if (sent.in_data and b"powershell_mkdtemp" in sent.in_data) or (not self.windows and "mkdir -p" in text):
            return 0, (WIN_TMP if self.windows else SH_TMP) + "\n", ""
        if "--request" in text:
            return self.rc, self.document or reply("apply", changed=True), ""
        # Ansible's own tmp dir removal (its PowerShell join_path leaves a trailing "\\." on the tmp dir).
        if f"Remove-Item '{WIN_TMP}\\.' -Force -Recurse;" in text or text.startswith(f"rm -f -r {SH_TMP}/ "):
            return 0, "", ""
        raise AssertionError(f"unexpected command: {text[:200]}")


def run_action(plugin: Any, connection: StrictConnection, args: dict[str, Any], **task: Any) -> dict[str, Any]:
    action = make_action(plugin.ActionModule, connection, FakeTask(args, **task))
    return dict(action.run(task_vars={"ansible_python_interpreter": "/usr/bin/python3"}))


def execs(connection: StrictConnection) -> list[Sent]:
    return [s for s in connection.sent if s.kind == "exec"]


def script_lines(sent: Sent) -> list[str]:
    assert sent.script is not None
    return list(sent.script.split("\n"))


@pytest.mark.parametrize("shell", ["powershell", "cmd"])
def test_windows_first_apply_probes_once_transfers_engine_and_package_installs_them_and_runs_apply(
    shell: str, engine: Any, package: tuple[Path, str]
) -> None:
    path, sha = package
    connection = StrictConnection(shell, Host(True, ["-", "-"]), remote_tmp="C:\\Windows\\TEMP")
    result = run_action(
        win_hotpatch, connection, {"allow_unsigned": True, "package": str(path), "trusted_keys": ["a2V5"]}
    )

    assert result.get("failed") is not True, result
    assert result["changed"] is True
    cache_engine = f"C:\\ProgramData\\rebootless\\{Path(engine.path).name}"
    cache_pkg = f"C:\\ProgramData\\rebootless\\packages\\{sha}.hpk"
    probe, _mkdtemp, run, _remove = execs(connection)
    assert script_lines(probe) == [
        "Set-StrictMode -Version Latest",
        "$dir = 'C:\\ProgramData\\rebootless'",
        "if (Test-Path -LiteralPath $dir -PathType Container) { [void](New-Item -ItemType Directory -Force -Path "
        "(Join-Path -Path $dir -ChildPath 'packages')); 'dir:ok' } else { 'dir:missing' }",
        "if (Test-Path -LiteralPath 'C:\\ProgramData\\rebootless\\python\\python.exe' -PathType Leaf) "
        "{ 'python:ok' } else { 'python:missing' }",
        f"foreach ($path in @('{cache_engine}', '{cache_pkg}')) {{",
        "if (Test-Path -LiteralPath $path -PathType Leaf) { (Get-FileHash -LiteralPath $path -Algorithm SHA256)"
        ".Hash.ToLowerInvariant() } else { '-' }",
        "}",
    ]
    puts = [(s.source, s.dest) for s in connection.sent if s.kind == "put"]
    assert puts[0] == (engine.path, f"{WIN_TMP}\\{Path(engine.path).name}")
    assert puts[1] == (str(path), f"{WIN_TMP}\\{sha}.hpk")
    assert puts[2][1] == f"{WIN_TMP}\\request.json"
    assert script_lines(run) == [
        "Set-StrictMode -Version Latest",
        "function Install-Cached([string]$Source, [string]$Target) {",
        "Copy-Item -LiteralPath $Source -Destination ($Target + '.part') -Force -ErrorAction Stop",
        "Move-Item -LiteralPath ($Target + '.part') -Destination $Target -Force -ErrorAction Stop",
        "}",
        f"Install-Cached '{WIN_TMP}\\{Path(engine.path).name}' '{cache_engine}'",
        f"Install-Cached '{WIN_TMP}\\{sha}.hpk' '{cache_pkg}'",
        "$env:PYTHONIOENCODING = 'utf-8'",
        f"& 'C:\\ProgramData\\rebootless\\python\\python.exe' '{cache_engine}' 'apply' '--request' '{WIN_TMP}\\request.json'",
        "exit $LASTEXITCODE",
    ]
    # The outer command line is fixed switches and base64 only: nothing for cmd.exe or a transport to reinterpret.
    for sent in execs(connection):
        assert sent.command.startswith("PowerShell -NoProfile -NonInteractive -ExecutionPolicy Unrestricted ")
        assert all(CmdShell().quote(token) == token for token in sent.command.split(" "))


def test_windows_cached_engine_and_package_are_not_transferred_again(engine: Any, package: tuple[Path, str]) -> None:
    path, sha = package
    connection = StrictConnection("powershell", Host(True, [engine.sha256, sha]), remote_tmp="C:\\Windows\\TEMP")
    run_action(win_hotpatch, connection, {"allow_unsigned": True, "package": str(path)})

    puts = [s.dest for s in connection.sent if s.kind == "put"]
    assert puts == [f"{WIN_TMP}\\request.json"]
    run = execs(connection)[2]
    assert script_lines(run)[1:] == [
        "$env:PYTHONIOENCODING = 'utf-8'",
        f"& 'C:\\ProgramData\\rebootless\\python\\python.exe' 'C:\\ProgramData\\rebootless\\{Path(engine.path).name}' "
        f"'apply' '--request' '{WIN_TMP}\\request.json'",
        "exit $LASTEXITCODE",
    ]


def test_sh_first_apply_command_strings(engine: Any, package: tuple[Path, str]) -> None:
    path, sha = package
    connection = StrictConnection("sh", Host(False, ["-", "-"]), remote_tmp="/tmp/ans")
    result = run_action(
        win_hotpatch, connection, {"allow_unsigned": True, "package": str(path), "engine_dir": "/opt/rb"}
    )

    assert result["changed"] is True
    probe, _mkdtemp, run, _remove = execs(connection)
    name = Path(engine.path).name
    assert probe.command == shlex.join(
        [
            "/usr/bin/python3",
            "-c",
            _action_base._PROBE_POSIX,
            "/opt/rb",
            "1",
            f"/opt/rb/{name}",
            f"/opt/rb/packages/{sha}.hpk",
        ]
    )
    assert run.command == (
        f"cp -- {SH_TMP}/{name} /opt/rb/{name}.part.ansible-tmp-1-1 && "
        f"mv -f -- /opt/rb/{name}.part.ansible-tmp-1-1 /opt/rb/{name} && "
        f"cp -- {SH_TMP}/{sha}.hpk /opt/rb/packages/{sha}.hpk.part.ansible-tmp-1-1 && "
        f"mv -f -- /opt/rb/packages/{sha}.hpk.part.ansible-tmp-1-1 /opt/rb/packages/{sha}.hpk && "
        f"PYTHONIOENCODING=utf-8 /usr/bin/python3 /opt/rb/{name} apply --request {SH_TMP}/request.json"
    )


def test_values_with_quotes_spaces_and_metacharacters_stay_literal_in_every_shell(engine: Any) -> None:
    hostile = "C:\\Program Files\\it's $(calc) & `x` %PATH% \u2018q\u2019"
    posix = '/opt/it\'s $(id) & `x` "q"'

    for name in ("powershell", "cmd"):
        commands = PowerShellCommands(shell_loader.get(name))
        line = commands.run(hostile + "\\python.exe", hostile + "\\e.pyz", "apply", hostile + "\\r.json", [])
        decoded = decode_powershell(line)
        assert decoded is not None
        call = decoded.split("\n")[2]
        # PowerShell single-quoted literals: '' (and doubled typographic quotes) stand for one quote character.
        literals = re.findall("'((?:[^'\u2018\u2019]|''|\u2018\u2018|\u2019\u2019)*)'", call)
        unescaped = [re.sub("(['\u2018\u2019])\\1", r"\1", value) for value in literals]
        assert unescaped == [hostile + "\\python.exe", hostile + "\\e.pyz", "apply", "--request", hostile + "\\r.json"]

    sh = PosixCommands(shell_loader.get("sh"))
    line = sh.run(posix + "/python3", posix + "/e.pyz", "apply", posix + "/r.json", [])
    assert shlex.split(line) == [
        "PYTHONIOENCODING=utf-8",
        posix + "/python3",
        posix + "/e.pyz",
        "apply",
        "--request",
        posix + "/r.json",
    ]


def test_bad_arguments_fail_on_the_controller_before_anything_is_sent(engine: Any, package: tuple[Path, str]) -> None:
    connection = StrictConnection("powershell", Host(True, []), remote_tmp="C:\\Windows\\TEMP")
    for args in (
        {"allow_unsigned": True, "package": str(package[0]), "state": "sideways"},
        {"allow_unsigned": True, "package": str(package[0]), "retries": "many"},
        {"state": "present"},
        {"allow_unsigned": True, "package": str(package[0]), "unknown_option": 1},
        {"allow_unsigned": True, "package": str(package[0]), "processes": {"pids": ["x"]}},
        {"allow_unsigned": True, "package": str(package[0]), "workers": 0},
        {"allow_unsigned": True, "package": str(package[0]), "workers": 65},
    ):
        with pytest.raises(AnsibleActionFail):
            run_action(win_hotpatch, connection, args)
    with pytest.raises(AnsibleActionFail, match="workers must be from 1 to 64, got 65; nothing was sent"):
        run_action(win_hotpatch, connection, {"allow_unsigned": True, "package": str(package[0]), "workers": 65})
    assert connection.sent == []


def test_tampered_or_missing_package_fails_on_the_controller_and_sends_nothing(engine: Any, tmp_path: Path) -> None:
    path = tmp_path / "fix.hpk"
    make_package(path)
    raw = bytearray(path.read_bytes())
    index = raw.find(b"MZ patched module")
    if index < 0:  # deflated: corrupt the middle of the archive instead
        index = len(raw) // 2
    raw[index] ^= 0xFF
    path.write_bytes(bytes(raw))
    connection = StrictConnection("powershell", Host(True, []), remote_tmp="C:\\Windows\\TEMP")
    with pytest.raises(AnsibleActionFail, match="rejected on the controller"):
        run_action(win_hotpatch, connection, {"allow_unsigned": True, "package": str(path)})
    with pytest.raises(AnsibleActionFail, match="not found on the controller"):
        run_action(win_hotpatch, connection, {"allow_unsigned": True, "package": str(tmp_path / "absent.hpk")})
    assert connection.sent == []


def test_remote_src_package_is_not_transferred_and_goes_to_the_engine_as_given(engine: Any) -> None:
    connection = StrictConnection("powershell", Host(True, [engine.sha256]), remote_tmp="C:\\Windows\\TEMP")
    run_action(win_hotpatch, connection, {"package": "D:\\Patches\\fix.hpk", "remote_src": True})
    probe = execs(connection)[0]
    assert f"foreach ($path in @('C:\\ProgramData\\rebootless\\{Path(engine.path).name}')) {{" in script_lines(probe)
    assert [s.dest for s in connection.sent if s.kind == "put"] == [f"{WIN_TMP}\\request.json"]


def test_windows_changing_run_without_engine_dir_fails_with_the_role_to_run(
    engine: Any, package: tuple[Path, str]
) -> None:
    connection = StrictConnection(
        "powershell", Host(True, ["-", "-"], dir_state="missing"), remote_tmp="C:\\Windows\\TEMP"
    )
    with pytest.raises(AnsibleActionFail, match=r"rebootless\.windows\.engine role"):
        run_action(win_hotpatch, connection, {"allow_unsigned": True, "package": str(package[0])})
    assert len(connection.sent) == 1  # the probe only


def test_check_mode_runs_plan_from_the_tmp_dir_and_installs_nothing(engine: Any, package: tuple[Path, str]) -> None:
    path = package[0]
    document = reply(
        "plan",
        processes=[
            {"pid": 7, "name": "appsvc.exe", "result": "would_patch", "code_before": "base", "code_after": "patched"}
        ],
    )
    connection = StrictConnection("sh", Host(False, ["-", "-"], document=document), remote_tmp="/tmp/ans")
    result = run_action(
        win_hotpatch, connection, {"allow_unsigned": True, "package": str(path)}, check_mode=True, diff=True
    )

    probe, _mkdtemp, run, _remove = execs(connection)
    assert shlex.split(probe.command)[3:5] == ["/var/lib/rebootless", "0"]  # do not create engine_dir
    name = Path(engine.path).name
    assert (
        run.command == f"PYTHONIOENCODING=utf-8 /usr/bin/python3 {SH_TMP}/{name} plan --request {SH_TMP}/request.json"
    )
    assert result["changed"] is True
    assert result["diff"] == {"before": "appsvc.exe (pid 7): base\n", "after": "appsvc.exe (pid 7): patched\n"}


def test_request_carries_the_validated_options_in_protocol_terms(engine: Any, tmp_path: Path) -> None:
    path = tmp_path / "signed.hpk"
    make_package(path)
    trusted = sign(path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    connection = StrictConnection("powershell", Host(True, [engine.sha256, sha]), remote_tmp="C:\\Windows\\TEMP")
    args = {
        "package": str(path),
        "state": "absent",
        "processes": {"names": ["appsvc.exe"], "pids": [42]},
        "activeness_check": True,
        "lock_timeout": 5,
        "workers": 2,
        "state_dir": "D:\\rb\\state",
        "trusted_keys": [trusted],
    }
    run_action(win_hotpatch, connection, args)
    assert json.loads([s.data for s in connection.sent if s.kind == "put"][-1]) == {
        "package": f"C:\\ProgramData\\rebootless\\packages\\{sha}.hpk",
        "state": "absent",
        "processes": {"names": ["appsvc.exe"], "pids": [42]},
        "activeness_check": True,
        "retries": 5,
        "retry_delay_ms": 20,
        "lock_timeout_s": 5,
        "allow_unsigned": False,
        "trusted_keys": [trusted],
        "state_dir": "D:\\rb\\state",
        "workers": 2,
    }
    assert "'rollback'" in script_lines(execs(connection)[2])[2]


def test_signature_is_checked_on_the_controller_before_anything_is_sent(engine: Any, tmp_path: Path) -> None:
    path = tmp_path / "fix.hpk"
    make_package(path)
    connection = StrictConnection("powershell", Host(True, []), remote_tmp="C:\\Windows\\TEMP")
    with pytest.raises(AnsibleActionFail, match="package is unsigned"):
        run_action(win_hotpatch, connection, {"package": str(path)})
    sign(path)
    other = tmp_path / "other.hpk"
    make_package(other)
    with pytest.raises(AnsibleActionFail, match="not among the trusted keys"):
        run_action(win_hotpatch, connection, {"package": str(path), "trusted_keys": [sign(other)]})
    assert connection.sent == []


def test_engine_exit_codes_become_failures_with_the_engine_message(engine: Any, package: tuple[Path, str]) -> None:
    path, sha = package
    rejected = reply("apply", ok=False, error={"kind": "signature", "message": "manifest.sig does not verify"})
    connection = StrictConnection(
        "sh", Host(False, [engine.sha256, sha], rc=4, document=rejected), remote_tmp="/tmp/ans"
    )
    result = run_action(win_hotpatch, connection, {"allow_unsigned": True, "package": str(path)})
    assert result["failed"] is True
    assert result["msg"] == "apply failed (signature, exit 4): manifest.sig does not verify"
    assert result["engine_rc"] == 4

    partial = reply(
        "apply",
        changed=True,
        cold_patch_required=True,
        reasons=["appsvc.exe (pid 9): base image mismatch"],
        processes=[
            {
                "pid": 8,
                "name": "appsvc.exe",
                "result": "patched",
                "pause_us": 200,
                "code_before": "base",
                "code_after": "patched",
            },
            {"pid": 9, "name": "appsvc.exe", "result": "refused", "reason": "base image mismatch"},
        ],
    )
    connection = StrictConnection(
        "sh", Host(False, [engine.sha256, sha], rc=1, document=partial), remote_tmp="/tmp/ans"
    )
    result = run_action(win_hotpatch, connection, {"allow_unsigned": True, "package": str(path)})
    assert result["failed"] is True
    assert result["msg"] == "apply: 1 of 2 processes failed or were refused: appsvc.exe (pid 9): base image mismatch"
    assert result["cold_patch_required"] is True
    assert [p["result"] for p in result["processes"]] == ["patched", "refused"]
    assert result["processes"][0]["pause_us"] == 200


def test_facts_run_inspect_and_return_documented_keys(engine: Any) -> None:
    document = reply(
        "inspect",
        facts={"product_name": "Windows Server 2025", "current_build": "26100", "ubr": 1742, "pending_reboot": False},
        processes=[
            {"pid": 5, "name": "appsvc.exe", "start_time": "1", "result": "loaded", "reason": "C:\\a\\appcore.dll"}
        ],
        applied=[{"id": "appcore-fix"}],
    )
    connection = StrictConnection("cmd", Host(True, [engine.sha256], document=document), remote_tmp="C:\\Windows\\TEMP")
    result = run_action(win_hotpatch_facts, connection, {"module": "appcore.dll"})
    facts = result["ansible_facts"]["hotpatch"]
    assert result["changed"] is False
    assert facts["os_build"] == "26100" and facts["os_ubr"] == 1742
    assert facts["vbs"] is None and facts["enrolment"] is None and facts["pending_reboot_reasons"] == []
    assert facts["processes"] == [
        {"pid": 5, "windows_pid": None, "name": "appsvc.exe", "start_time": "1", "module_path": "C:\\a\\appcore.dll"}
    ]
    assert facts["applied"] == [{"id": "appcore-fix"}]
    assert "'inspect'" in script_lines(execs(connection)[2])[2]


def test_become_on_windows_warns_that_the_engine_runs_as_the_connection_user(
    engine: Any, package: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ansible.playbook.play_context import PlayContext

    path, sha = package
    connection = StrictConnection("powershell", Host(True, [engine.sha256, sha]), remote_tmp="C:\\Windows\\TEMP")
    play_context = PlayContext()
    play_context.become = True
    action = make_action(
        win_hotpatch.ActionModule, connection, FakeTask({"allow_unsigned": True, "package": str(path)}), play_context
    )
    warnings: list[str] = []
    monkeypatch.setattr(action._display, "warning", lambda message, *args, **kwargs: warnings.append(message))
    action.run(task_vars={})
    assert warnings == ["become is not applied to the engine on Windows: connect as an Administrator"]


def test_windows_commands_stay_under_the_cmd_line_limit_with_long_paths(engine: Any, package: tuple[Path, str]) -> None:
    path, _sha = package
    engine_dir = "D:\\" + "\\".join(["rebootless-engine-cache"] * 10)  # ~240 characters, near MAX_PATH
    connection = StrictConnection("cmd", Host(True, ["-", "-"]), remote_tmp="C:\\Windows\\TEMP")
    run_action(win_hotpatch, connection, {"allow_unsigned": True, "package": str(path), "engine_dir": engine_dir})
    assert max(len(sent.command) for sent in execs(connection)) < 8191  # cmd.exe's command line limit
