"""The engine action base end to end over Ansible's real ``local`` connection and ``sh`` shell (stub engine).

Everything here is real except the engine, which is a stub zipapp answering the protocol (the real engine is
exercised by tests/integration/test_modules.py): real sh quoting, real transfers, real Python on the "host".
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from ansible.errors import AnsibleActionFail
from ansible.playbook.play_context import PlayContext
from ansible.plugins.loader import connection_loader

from ansible_collections.rebootless.windows.plugins.action import win_hotpatch, win_hotpatch_facts
from ansible_collections.rebootless.windows.plugins.plugin_utils import _action_base
from ansible_collections.rebootless.windows.tests.unit.plugins.action_harness import (
    FakeTask,
    make_action,
    make_package,
    reply,
    stub_engine,
)


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    archive = stub_engine(tmp_path)
    monkeypatch.setattr(_action_base, "engine_archive", lambda: archive)
    log = tmp_path / "engine.log"
    monkeypatch.setenv("STUB_ENGINE_LOG", str(log))
    package = tmp_path / "fix.hpk"
    sha = make_package(package)
    remote_tmp = tmp_path / "remote tmp"
    remote_tmp.mkdir()
    return {"archive": archive, "log": log, "package": package, "sha": sha, "remote_tmp": remote_tmp, "root": tmp_path}


def run(host: dict[str, Any], plugin: Any, args: dict[str, Any], **task: Any) -> tuple[dict[str, Any], list[str]]:
    """Run the action over a real local connection; returns the result and the paths put on the host."""
    play_context = PlayContext()
    connection = connection_loader.get("local", play_context, os.devnull)
    connection._shell.set_options(direct={"remote_tmp": str(host["remote_tmp"])})
    puts: list[str] = []
    original = connection.put_file

    def put_file(in_path: str, out_path: str) -> None:
        puts.append(out_path)
        original(in_path, out_path)

    connection.put_file = put_file
    action = make_action(plugin.ActionModule, connection, FakeTask(args, **task), play_context)
    result = action.run(task_vars={"ansible_python_interpreter": sys.executable})
    return dict(result), puts


def calls(host: dict[str, Any]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in host["log"].read_text().splitlines()]


def test_second_apply_transfers_nothing_but_the_request(host: dict[str, Any]) -> None:
    engine_dir = host["root"] / "engine dir"
    args = {"allow_unsigned": True, "package": str(host["package"]), "engine_dir": str(engine_dir)}

    first, first_puts = run(host, win_hotpatch, args)
    second_puts = run(host, win_hotpatch, args)[1]

    assert first.get("failed") is not True, first
    assert [Path(p).name for p in first_puts] == [Path(host["archive"].path).name, f"{host['sha']}.hpk", "request.json"]
    assert [Path(p).name for p in second_puts] == ["request.json"]
    cached_engine = engine_dir / Path(host["archive"].path).name
    cached_package = engine_dir / "packages" / f"{host['sha']}.hpk"
    assert hashlib.sha256(cached_engine.read_bytes()).hexdigest() == host["archive"].sha256
    assert hashlib.sha256(cached_package.read_bytes()).hexdigest() == host["sha"]
    assert sorted(p.name for p in engine_dir.iterdir()) == sorted([cached_engine.name, "packages"])  # no .part left
    log = calls(host)
    assert [c["verb"] for c in log] == ["apply", "apply"]
    assert log[1]["argv0"] == str(cached_engine)
    assert log[1]["request"]["package"] == str(cached_package)
    assert list(host["remote_tmp"].iterdir()) == []  # the task's tmp dir is gone
    assert first["package"] == {"id": "appcore-fix", "module": "appcore.dll", "version": "2.0.0", "sha256": host["sha"]}


def test_check_mode_creates_no_engine_dir_and_leaves_no_file(host: dict[str, Any]) -> None:
    engine_dir = host["root"] / "never"
    result = run(
        host,
        win_hotpatch,
        {"allow_unsigned": True, "package": str(host["package"]), "engine_dir": str(engine_dir)},
        check_mode=True,
    )[0]

    assert result.get("failed") is not True, result
    assert not engine_dir.exists()
    assert calls(host)[0]["verb"] == "plan"
    assert calls(host)[0]["request"]["state"] == "present"
    assert list(host["remote_tmp"].iterdir()) == []


def test_paths_with_quotes_spaces_and_dollars_reach_the_engine_unchanged(host: dict[str, Any]) -> None:
    engine_dir = host["root"] / 'it\'s $(id) & `x` "q"'
    state_dir = host["root"] / "state; rm -rf ~"
    result = run(
        host,
        win_hotpatch,
        {
            "allow_unsigned": True,
            "package": str(host["package"]),
            "engine_dir": str(engine_dir),
            "state_dir": str(state_dir),
        },
    )[0]

    assert result.get("failed") is not True, result
    assert calls(host)[0]["argv0"] == str(engine_dir / Path(host["archive"].path).name)
    assert calls(host)[0]["request"]["state_dir"] == str(state_dir)
    assert not state_dir.exists()


def test_package_rejected_by_the_engine_fails_with_its_message(
    host: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STUB_ENGINE_RC", "3")
    monkeypatch.setenv(
        "STUB_ENGINE_REPLY",
        reply("apply", ok=False, error={"kind": "package", "message": "member code.bin does not match"}),
    )
    result = run(
        host,
        win_hotpatch,
        {"allow_unsigned": True, "package": str(host["package"]), "engine_dir": str(host["root"] / "e")},
    )[0]
    assert result["failed"] is True
    assert result["msg"] == "apply failed (package, exit 3): member code.bin does not match"


def test_missing_python_on_the_host_fails_saying_which_setting_to_fix(host: dict[str, Any]) -> None:
    with pytest.raises(AnsibleActionFail, match="set `python`"):
        run(
            host,
            win_hotpatch,
            {"allow_unsigned": True, "package": str(host["package"]), "python": "/nonexistent/python3"},
        )
    assert not host["log"].exists()


def test_facts_cache_the_engine_only_where_engine_dir_exists(host: dict[str, Any]) -> None:
    missing = host["root"] / "missing"
    result, puts = run(host, win_hotpatch_facts, {"engine_dir": str(missing)})
    assert result["ansible_facts"]["hotpatch"]["engine_version"] == "0.0.0-stub"
    assert not missing.exists()

    present = host["root"] / "present"
    present.mkdir()
    run(host, win_hotpatch_facts, {"engine_dir": str(present)})
    puts = run(host, win_hotpatch_facts, {"engine_dir": str(present)})[1]
    assert [Path(p).name for p in puts] == ["request.json"]
    assert [c["verb"] for c in calls(host)] == ["inspect"] * 3
