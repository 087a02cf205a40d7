"""win_hotpatch_kb's action plugin over Ansible's real ``local`` connection (stub engine, then the real one),
and its documentation against its argument spec."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ansible.errors import AnsibleActionFail
from ansible.playbook.play_context import PlayContext
from ansible.plugins.loader import connection_loader

from ansible_collections.rebootless.windows.plugins.action import win_hotpatch_kb
from ansible_collections.rebootless.windows.plugins.plugin_utils import _action_base
from ansible_collections.rebootless.windows.tests.unit.plugins.action_harness import FakeTask, make_action, stub_engine

ROOT = Path(__file__).resolve().parents[3]
KB = "C:\\ProgramData\\rebootless\\kb\\windows11.0-kb5099999-x64.msu"

INSTALLED = {
    "verb": "kb_install",
    "ok": True,
    "changed": True,
    "engine_version": "0.1.0",
    "platform": "windows",
    "result": "needs_reboot",
    "predicted": {"verdict": "needs_reboot", "reasons": ["ntfoo.dll: not on the baseline"], "unclassified": []},
    "facts": {"ubr": 2894, "os_build": "26100.2894", "pending_reboot_reasons": [], "hotpatch_blockers": []},
    "facts_after": {"ubr": 2894, "os_build": "26100.2894", "vbs": "running", "pending_reboot": True,
                    "pending_reboot_reasons": ["component_servicing"]},
    "dism": {"rc": 3010, "symbol": "ERROR_SUCCESS_REBOOT_REQUIRED", "result": "reboot_required"},
    "reasons": ["installed; a restart completes it"],
    "error": None,
}  # fmt: skip


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    archive = stub_engine(tmp_path)
    monkeypatch.setattr(_action_base, "engine_archive", lambda: archive)
    log = tmp_path / "engine.log"
    monkeypatch.setenv("STUB_ENGINE_LOG", str(log))
    remote_tmp = tmp_path / "remote tmp"
    remote_tmp.mkdir()
    return {"log": log, "remote_tmp": remote_tmp}


def run(host: dict[str, Any], args: dict[str, Any], **task: Any) -> dict[str, Any]:
    play_context = PlayContext()
    connection = connection_loader.get("local", play_context, os.devnull)
    connection._shell.set_options(direct={"remote_tmp": str(host["remote_tmp"])})
    action = make_action(win_hotpatch_kb.ActionModule, connection, FakeTask(args, **task), play_context)
    return dict(action.run(task_vars={"ansible_python_interpreter": sys.executable}))


def calls(host: dict[str, Any]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in host["log"].read_text().splitlines()]


def test_install_sends_kb_install_with_the_request_in_protocol_terms(
    host: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STUB_ENGINE_REPLY", json.dumps(INSTALLED))
    result = run(host, {"path": KB, "log_path": "C:\\Windows\\Logs\\kb.log", "system_dirs": ["D:\\sys"]})
    [call] = calls(host)
    assert call["verb"] == "kb_install"
    assert call["request"] == {
        "path": KB,
        "timeout_s": 7200,
        "lock_timeout_s": 30,
        "log_path": "C:\\Windows\\Logs\\kb.log",
        "system_dirs": ["D:\\sys"],
    }
    assert result.get("failed") is not True, result
    assert (result["changed"], result["result"], result["hotpatched"], result["reboot_required"]) == (
        True,
        "needs_reboot",
        False,
        True,
    )
    assert (result["ubr_before"], result["ubr_after"]) == (2894, 2894)
    assert result["pending_reboot_reasons"] == ["component_servicing"]
    assert result["dism"]["symbol"] == "ERROR_SUCCESS_REBOOT_REQUIRED"
    assert result["os"]["vbs"] == "running"


def test_check_mode_sends_kb_classify(host: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    predicted = {"verdict": "hotpatch", "reasons": ["hotpatches ntfoo.dll"]}
    document = INSTALLED | {"verb": "kb_classify", "changed": False, "result": "would_hotpatch", "dism": None,
                            "facts_after": None, "predicted": predicted}  # fmt: skip
    monkeypatch.setenv("STUB_ENGINE_REPLY", json.dumps(document))
    result = run(host, {"path": KB}, check_mode=True)
    assert [c["verb"] for c in calls(host)] == ["kb_classify"]
    assert (result["changed"], result["result"], result["reboot_required"], result["ubr_after"]) == (
        False,
        "would_hotpatch",
        False,
        None,
    )


def test_a_failed_install_fails_the_task_with_dism_s_reason(
    host: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    document = INSTALLED | {"ok": False, "changed": False, "result": "failed",
                            "reasons": ["DISM: the package needs a newer servicing stack (CBS_E_NEW_SERVICING_STACK_REQUIRED)"]}  # fmt: skip
    monkeypatch.setenv("STUB_ENGINE_REPLY", json.dumps(document))
    monkeypatch.setenv("STUB_ENGINE_RC", "1")
    result = run(host, {"path": KB})
    assert result["failed"] is True and result["engine_rc"] == 1
    assert result["msg"] == (
        "kb_install: the KB did not install: DISM: the package needs a newer servicing stack "
        "(CBS_E_NEW_SERVICING_STACK_REQUIRED)"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"path": "C:\\kb.zip"}, "path must name an .msu or .cab"),
        ({"path": KB, "timeout": 0}, "timeout must be from 1 to 86400"),
        ({"path": KB, "system_dirs": [""]}, "system_dirs must not contain empty paths"),
    ],
)
def test_bad_arguments_fail_before_anything_is_sent(host: dict[str, Any], args: dict[str, Any], message: str) -> None:
    with pytest.raises(AnsibleActionFail, match=message):
        run(host, args)
    assert not host["log"].exists()


def test_the_real_engine_answers_kb_install_and_refuses_a_host_that_is_not_windows(tmp_path: Path) -> None:
    remote_tmp = tmp_path / "remote tmp"
    remote_tmp.mkdir()
    result = run({"remote_tmp": remote_tmp}, {"path": KB, "engine_dir": str(tmp_path / "engine")})
    assert result["failed"] is True and result["engine_rc"] == 7
    assert "need a Windows host" in result["msg"]


def test_documented_options_equal_the_argument_spec() -> None:
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=f"{ROOT / '.collections'}:{ROOT / '.cache' / 'collections'}")
    doc_tool = Path(sys.executable).parent / "ansible-doc"
    done = subprocess.run(
        [str(doc_tool), "-j", "rebootless.windows.win_hotpatch_kb"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    options = json.loads(done.stdout)["rebootless.windows.win_hotpatch_kb"]["doc"]["options"]
    documented = {
        name: (o.get("type", "str"), o.get("default"), o.get("elements"), bool(o.get("required", False)))
        for name, o in options.items()
    }
    spec = {
        name: (o.get("type", "str"), o.get("default"), o.get("elements"), bool(o.get("required", False)))
        for name, o in win_hotpatch_kb.ARGUMENT_SPEC.items()
    }
    assert documented == spec
