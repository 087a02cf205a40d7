"""Killing the engine at every named step leaves each process on old or new code, and the next run settles it.

REBOOTLESS_FAULT_STEP makes a real engine os._exit(99) at a step; here the exit hook raises instead, and
FakeBackend.engine_died() does what the OS does to a dead tracer's targets (threads run on, handles close).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.host.faults import STEPS, fault_point

from .conftest import Killed, Runner
from .fake_backend import FakeBackend, FakeHandle, FakeProcess
from .images import Fixture, spawn

APPLY_STEPS = [s for s in STEPS if s.startswith("apply_")]
ROLLBACK_STEPS = [s for s in STEPS if s.startswith(("rollback_", "release_"))]
Arm = Callable[[str | None], None]


def _runs_old_or_new(proc: FakeProcess) -> set[str]:
    """Each function runs either its base or its patched code (run() raises on anything else)."""
    return set(proc.code().values())


def _open_records(state_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((state_dir / "journal").glob("*.json"))]


def _consistent(proc: FakeProcess, state_dir: Path) -> str:
    """After recovery: all base with nothing left behind, or all patched with an applied record."""
    code = _runs_old_or_new(proc)
    states = [p["state"] for r in _open_records(state_dir) for p in r.get("processes", [])]
    if code == {"base"}:
        assert not proc.blobs() and not proc.tables and states == []
        return "base"
    assert code == {"patched"} and states == ["applied"] and len(proc.blobs()) == 1 and len(proc.tables) == 1
    return "patched"


@pytest.mark.parametrize("step", APPLY_STEPS)
def test_killed_apply_leaves_old_or_new_code_and_recovers(
    backend: FakeBackend, fx: Fixture, run: Runner, state_dir: Path, kill_at: Arm, step: str
) -> None:
    proc = spawn(backend, fx)
    kill_at(step)
    with pytest.raises(Killed):
        run("apply")
    backend.engine_died()
    _runs_old_or_new(proc)
    kill_at(None)
    code, result = run("recover")
    assert code == 0, result
    outcome = _consistent(proc, state_dir)
    expected = "patched" if step in ("apply_after_switch", "apply_after_resume", "apply_after_journal") else "base"
    assert outcome == expected
    # and the host is usable again: apply, then roll back to a clean process
    assert run("apply")[0] == 0 and _runs_old_or_new(proc) == {"patched"}
    assert run("rollback")[0] == 0 and _runs_old_or_new(proc) == {"base"}
    assert not proc.blobs() and not proc.tables and _open_records(state_dir) == []


@pytest.mark.parametrize("step", ROLLBACK_STEPS)
def test_killed_rollback_leaves_old_or_new_code_and_recovers(
    backend: FakeBackend, fx: Fixture, run: Runner, state_dir: Path, kill_at: Arm, step: str
) -> None:
    proc = spawn(backend, fx)
    assert run("apply")[0] == 0
    kill_at(step)
    with pytest.raises(Killed):
        run("rollback")
    backend.engine_died()
    _runs_old_or_new(proc)
    kill_at(None)
    code, result = run("recover")
    assert code == 0, result
    outcome = _consistent(proc, state_dir)
    assert outcome == "base"  # a rollback that was under way is finished
    assert run("rollback")[0] == 0 and _consistent(proc, state_dir) == "base"
    assert run("apply")[0] == 0 and _runs_old_or_new(proc) == {"patched"}


def test_every_changing_verb_recovers_first(
    backend: FakeBackend, fx: Fixture, run: Runner, state_dir: Path, kill_at: Arm
) -> None:
    proc = spawn(backend, fx)
    kill_at("apply_after_entry")
    with pytest.raises(Killed):
        run("apply")
    backend.engine_died()
    kill_at(None)
    code, result = run("apply")
    assert code == 0 and result["recovered"][0]["to"] == "aborted"
    assert result["processes"][0]["result"] == "patched" and _consistent(proc, state_dir) == "patched"


def test_recovery_waits_for_a_thread_left_in_the_blob(
    backend: FakeBackend, fx: Fixture, run: Runner, state_dir: Path, kill_at: Arm
) -> None:
    proc = spawn(backend, fx)
    kill_at("apply_after_entry")  # fn0 redirected, fn1 and fn2 not yet
    with pytest.raises(Killed):
        run("apply")
    backend.engine_died()
    kill_at(None)
    proc.threads[0].rip = proc.blobs()[0].start + 2  # a thread entered the new fn0 meanwhile
    code, result = run("recover", retries=0)
    assert code == 0 and _runs_old_or_new(proc) == {"base"} and len(proc.blobs()) == 1
    assert "blob kept" in result["recovered"][0]["note"]
    proc.threads[0].rip = 0x7FF00000
    run("recover")
    assert _consistent(proc, state_dir) == "base"


def test_an_engine_killed_after_journaling_an_allocation_but_before_making_it_leaves_nothing_to_free(
    backend: FakeBackend, fx: Fixture, run: Runner, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc = spawn(backend, fx)

    def dies_in_the_system_call(
        self: FakeHandle, base: int, size: int, span: int = 0x7FFF0000, intent: Callable[[int], None] | None = None
    ) -> int:
        assert intent is not None, "the allocation must be journaled ahead"
        intent(0x1_8000_0000)
        raise Killed()

    monkeypatch.setattr(FakeHandle, "allocate_near", dies_in_the_system_call)
    with pytest.raises(Killed):
        run("apply")
    backend.engine_died()
    [record] = _open_records(state_dir)
    assert [(p["state"], p["blob_mapped"], p["blob_address"]) for p in record["processes"]] == [
        ("staging", False, 0x1_8000_0000)
    ]
    monkeypatch.undo()
    code, result = run("recover")
    assert code == 0 and "nothing to free" in result["recovered"][0]["note"], result
    assert _open_records(state_dir) == [] and not proc.blobs() and _runs_old_or_new(proc) == {"base"}


def test_memory_at_an_intended_address_that_is_not_ours_is_left_alone(
    backend: FakeBackend, fx: Fixture, run: Runner, state_dir: Path, kill_at: Arm
) -> None:
    proc = spawn(backend, fx)
    kill_at("apply_after_mmap")
    with pytest.raises(Killed):
        run("apply")
    backend.engine_died()
    [blob] = proc.blobs()
    blob.data[:4] = b"\x48\x8b\x05\x00"  # something else lives there now: neither zeros nor our blob
    kill_at(None)
    code, result = run("recover")
    assert code == 0 and "not ours, left alone" in result["recovered"][0]["note"], result
    assert proc.blobs() == [blob] and _open_records(state_dir) == []


def test_a_process_that_died_while_the_engine_was_down_is_retired(
    backend: FakeBackend, fx: Fixture, run: Runner, state_dir: Path, kill_at: Arm
) -> None:
    proc = spawn(backend, fx)
    kill_at("apply_after_padding")
    with pytest.raises(Killed):
        run("apply")
    backend.engine_died()
    backend.kill(proc.info.pid)
    kill_at(None)
    code, result = run("recover")
    assert code == 0 and result["recovered"][0]["to"] == "retired" and _open_records(state_dir) == []


def test_unknown_bytes_at_a_journaled_address_need_an_operator(
    backend: FakeBackend, fx: Fixture, run: Runner, kill_at: Arm
) -> None:
    proc = spawn(backend, fx)
    kill_at("apply_after_entry")
    with pytest.raises(Killed):
        run("apply")
    backend.engine_died()
    kill_at(None)
    proc.regions[0].data[proc.functions["fn2"].entry - proc.regions[0].start] = 0x90
    code, result = run("recover")
    assert code == 8 and result["error"]["kind"] == "journal" and "inspect" in result["error"]["message"]


def test_every_step_name_is_checked_somewhere() -> None:
    source = "".join(
        p.read_text() for p in (Path(__file__).parents[3] / "plugins/module_utils/hotpatch/host").glob("*.py")
    )
    for step in STEPS:
        assert f'"{step}"' in source.replace(f'    "{step}",', ""), step
    with pytest.raises(ValueError):
        fault_point("no_such_step")
