"""Host lock between two engines, the command line contract (one JSON document, exit codes), request parsing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.errors import RequestError
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.host.journal import Journal
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.host.lock import HostLock
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.host.request import parse_request

from .conftest import Runner
from .fake_backend import FakeBackend
from .images import Fixture, spawn

ENGINE_ROOT = Path(__file__).resolve().parents[3] / "plugins" / "module_utils"

_HOLDER = """
import sys
sys.path.insert(0, sys.argv[1])
from hotpatch.host.lock import HostLock
with HostLock(sys.argv[2], 5):
    print("locked", flush=True)
    sys.stdin.readline()
"""


@pytest.fixture
def other_engine(state_dir: Path) -> Any:
    """Another engine process holding the host lock until its stdin closes."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(ENGINE_ROOT), str(state_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    yield holder
    if holder.poll() is None:
        holder.communicate("")


def test_a_second_engine_waits_for_the_lock_then_gives_up(
    backend: FakeBackend, fx: Fixture, run: Runner, other_engine: Any
) -> None:
    proc = spawn(backend, fx)
    code, result = run("apply", lock_timeout_s=0.2)
    assert code == 6 and result["error"]["kind"] == "lock" and "lock_timeout_s" in result["error"]["message"]
    assert set(proc.code().values()) == {"base"} and proc.quiesce_count == 0
    other_engine.communicate("")  # the other engine finishes
    assert run("apply", lock_timeout_s=5)[0] == 0


def test_the_lock_is_released_when_its_holder_dies(state_dir: Path, other_engine: Any) -> None:
    other_engine.kill()
    other_engine.wait()
    with HostLock(str(state_dir), 2):
        pass


def test_read_only_verbs_do_not_take_the_lock(
    backend: FakeBackend, fx: Fixture, run: Runner, other_engine: Any
) -> None:
    spawn(backend, fx)
    assert run("status", lock_timeout_s=0)[0] == 0
    assert run("verify", lock_timeout_s=0)[0] == 0
    assert run("plan", lock_timeout_s=0)[0] == 0


def _cli(tmp_path: Path, verb: str, request: Any, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    path = tmp_path / "request.json"
    path.write_text(request if isinstance(request, str) else json.dumps(request))
    done = subprocess.run(
        [sys.executable, "-m", "hotpatch", verb, "--request", str(path)],
        cwd=ENGINE_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


def test_cli_prints_exactly_one_json_document(tmp_path: Path) -> None:
    code, out, _unused = _cli(tmp_path, "status", {"state_dir": str(tmp_path / "s"), "backend": "wine"})
    assert code == 0 and out.count("\n") == 1
    result = json.loads(out)
    assert result["ok"] and result["verb"] == "status" and result["platform"] == "wine"
    assert result["engine_version"] and "error" not in result


@pytest.mark.parametrize(
    ("verb", "request_doc", "kind"),
    [
        ("explode", {}, "request"),
        ("status", "{not json", "request"),
        ("status", {"colour": "blue"}, "request"),
        ("apply", {}, "request"),
        ("apply", {"package": "/nonexistent.hpk"}, "package"),
    ],
)
def test_cli_reports_bad_input_with_its_exit_code(tmp_path: Path, verb: str, request_doc: Any, kind: str) -> None:
    code, out, _unused = _cli(tmp_path, verb, request_doc)
    result = json.loads(out)
    assert (code, result["error"]["kind"], result["ok"]) == ({"request": 2, "package": 3}[kind], kind, False)


def test_cli_refuses_an_unsigned_package_without_allow_unsigned(tmp_path: Path, fx: Fixture) -> None:
    code, out, _unused = _cli(tmp_path, "plan", {"package": str(fx.package), "state_dir": str(tmp_path / "s")})
    assert code == 4 and "allow_unsigned" in json.loads(out)["error"]["message"]


def test_a_tampered_package_changes_nothing(backend: FakeBackend, fx: Fixture, run: Runner, tmp_path: Path) -> None:
    proc = spawn(backend, fx)
    bad = tmp_path / "bad.hpk"
    with zipfile.ZipFile(fx.package) as good, zipfile.ZipFile(bad, "w") as out:
        for info in good.infolist():
            data = good.read(info)
            out.writestr(info, data[:-1] + bytes([data[-1] ^ 1]) if info.filename == "code.bin" else data)
    code, result = run("apply", package=str(bad))
    assert code == 3 and result["error"]["kind"] == "package"
    assert proc.log == [] and not (tmp_path / "state" / "journal").exists()


def test_cli_fault_step_exits_99_without_output(tmp_path: Path) -> None:
    # recover with an empty journal meets no step; a step that is met exits 99 (checked with the fake in-process)
    code, out, _unused = _cli(
        tmp_path,
        "recover",
        {"state_dir": str(tmp_path / "s"), "backend": "wine"},
        {"REBOOTLESS_FAULT_STEP": "apply_after_switch"},
    )
    assert code == 0 and json.loads(out)["recovered"] == []


def test_inspect_reports_facts_processes_and_journal(backend: FakeBackend, fx: Fixture, run: Runner) -> None:
    proc = spawn(backend, fx)
    run("apply")
    code, result = run("inspect", package=None, module="APPCORE.DLL")
    assert code == 0 and result["facts"]["platform"] == "wine" and result["facts"]["kernel"]
    assert result["facts"]["pending_reboot"] is False
    assert [p["pid"] for p in result["processes"]] == [proc.info.pid]
    assert result["processes"][0]["result"] == "loaded"
    (applied,) = result["applied"]
    assert applied["alive"] and applied["package"] == "appcore-fix" and applied["state"] == "applied"


def test_status_lists_applied_and_staged_packages(backend: FakeBackend, fx: Fixture, run: Runner) -> None:
    proc = spawn(backend, fx)
    run("apply")
    run("stage", module_path=str(fx.module_path))
    backend.kill(proc.info.pid)
    code, result = run("status", package=None)
    assert code == 0 and result["applied"][0]["alive"] is False
    assert result["staged"][0]["state"] == "staged"


def test_damaged_journal_needs_an_operator(backend: FakeBackend, fx: Fixture, run: Runner, state_dir: Path) -> None:
    spawn(backend, fx)
    (state_dir / "journal").mkdir(parents=True)
    (state_dir / "journal" / "20260101T000000000000-apply-x.json").write_text("{")
    code, result = run("apply")
    assert code == 8 and "damaged" in result["error"]["message"]


def test_journal_save_is_atomic(tmp_path: Path) -> None:
    journal = Journal(str(tmp_path))
    from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.host.journal import PackageRef

    record = journal.new_apply(PackageRef("p", "1", "m.dll", "k" * 64, "s" * 64))
    journal.save(record)
    journal.save(record)
    assert [p.name for p in (tmp_path / "journal").iterdir()] == [Path(record.path).name]
    assert journal.load(record.path).package.id == "p"


@pytest.mark.parametrize(
    "request_doc",
    [
        {"retries": -1},
        {"retries": True},
        {"processes": {"names": "appsvc.exe"}},
        {"processes": {"pids": [0]}},
        {"processes": {"exe": []}},
        {"backend": "macos"},
        {"state": "gone"},
        {"trusted_keys": "abc"},
        {"lock_timeout_s": "10"},
        [],
    ],
)
def test_bad_requests_are_rejected(request_doc: Any) -> None:
    with pytest.raises(RequestError):
        parse_request("status", request_doc)


def test_request_defaults() -> None:
    request = parse_request("status", {})
    assert (request.backend, request.state, request.retries, request.allow_unsigned) == ("auto", "present", 5, False)
    assert request.state_dir == "/var/lib/rebootless/state"
