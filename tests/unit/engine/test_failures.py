"""Every failure of apply leaves the process on the old code with nothing left behind (all-or-nothing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.errors import CallLeftRunning

from .conftest import Runner
from .fake_backend import FakeBackend, FakeHandle, FakeProcess
from .images import Fixture, spawn


def _untouched(proc: FakeProcess) -> None:
    assert set(proc.code().values()) == {"base"}
    assert not proc.blobs() and not proc.tables and not proc.quiesced


def _park_on(proc: FakeProcess, address: int, until_attempt: int) -> None:
    """Thread 0 stands at ``address`` for the first ``until_attempt`` quiesces, then moves on."""

    def move(p: FakeProcess, attempt: int) -> None:
        p.threads[0].rip = address if attempt <= until_attempt else 0x7FF00000

    proc.on_quiesce = move


def test_a_thread_on_the_jump_bytes_is_waited_for(backend: FakeBackend, fx: Fixture, run: Runner) -> None:
    proc = spawn(backend, fx)
    _park_on(proc, proc.functions["fn1"].entry + 1, until_attempt=2)  # inside a 1-byte-NOP entry
    code, result = run("apply", retries=3)
    assert code == 0 and result["processes"][0]["attempts"] == 3
    assert set(proc.code().values()) == {"patched"}


@pytest.mark.parametrize("offset", [-5, -1, 1])
def test_a_thread_that_stays_on_the_jump_bytes_fails_the_process_cleanly(
    backend: FakeBackend, fx: Fixture, run: Runner, offset: int
) -> None:
    proc = spawn(backend, fx)
    _park_on(proc, proc.functions["fn2"].entry + offset, until_attempt=99)
    code, result = run("apply", retries=2)
    entry = result["processes"][0]
    assert code == 1 and entry["result"] == "failed" and "3 attempts" in entry["reason"]
    assert entry["code_after"] == "base" and proc.quiesce_count == 3
    _untouched(proc)


def test_activeness_check_waits_for_return_addresses_into_patched_functions(
    backend: FakeBackend, fx: Fixture, run: Runner
) -> None:
    proc = spawn(backend, fx)
    inside = proc.functions["fn0"].entry + 7

    def stack(p: FakeProcess, attempt: int) -> None:
        p.threads[1].stack = (0x7FF00010, inside) if attempt == 1 else ()

    proc.on_quiesce = stack
    code, result = run("apply", activeness_check=True)
    assert code == 0 and result["processes"][0]["attempts"] == 2


def test_activeness_check_refuses_while_a_function_stays_active(backend: FakeBackend, fx: Fixture, run: Runner) -> None:
    proc = spawn(backend, fx)
    proc.threads[1].stack = (proc.functions["fn2"].entry + 3,)
    code, result = run("apply", activeness_check=True, retries=1)
    assert code == 1 and "return address" in result["processes"][0]["reason"]
    _untouched(proc)
    # without the check, return addresses into the old function are fine (it stays intact)
    assert run("apply")[0] == 0


@pytest.mark.parametrize("failing_write", [1, 2, 3, 4])  # the switch makes 4 writes (see test_apply)
def test_a_write_failing_mid_switch_restores_every_byte(
    backend: FakeBackend, fx: Fixture, run: Runner, failing_write: int
) -> None:
    proc = spawn(backend, fx)
    proc.fail.code_write_number = failing_write
    code, result = run("apply")
    entry = result["processes"][0]
    assert code == 1 and entry["result"] == "failed" and "undone" in entry["reason"]
    _untouched(proc)
    proc.fail.code_write_number = None
    assert run("apply")[0] == 0 and set(proc.code().values()) == {"patched"}


@pytest.mark.parametrize("failure", ["allocate", "protect", "add_table", "quiesce"], ids=lambda f: f"{f}_fails")
def test_a_platform_failure_while_staging_leaves_nothing_behind(
    backend: FakeBackend, fx: Fixture, run: Runner, failure: str
) -> None:
    proc = spawn(backend, fx)
    setattr(proc.fail, failure, f"injected {failure} failure")
    other = spawn(backend, fx)
    code, result = run("apply")
    got = {p["pid"]: p for p in result["processes"]}
    assert code == 1 and got[proc.info.pid]["result"] == "failed"
    assert f"injected {failure} failure" in got[proc.info.pid]["reason"]
    _untouched(proc)
    assert got[other.info.pid]["result"] == "patched"  # one bad process does not stop the others


@pytest.mark.parametrize("registered", [True, False], ids=["registered_before_the_abort", "registered_later"])
def test_an_unwind_registration_left_running_never_leaves_a_table_over_freed_memory(
    backend: FakeBackend, fx: Fixture, run: Runner, monkeypatch: pytest.MonkeyPatch, registered: bool
) -> None:
    """RtlAddFunctionTable that did not return in time is left to finish on its own thread (CallLeftRunning): it
    may register the table at any moment, so the blob is freed only once the table could be removed."""
    proc = spawn(backend, fx)
    real = FakeHandle.add_function_table
    late: list[tuple[int, int, int]] = []

    def left_running(self: FakeHandle, table: int, count: int, base: int) -> None:
        if registered:
            real(self, table, count, base)
        else:
            late.append((table, count, base))
        raise CallLeftRunning("did not return within 12.0 s; the thread was left to finish it")

    monkeypatch.setattr(FakeHandle, "add_function_table", left_running)
    code, result = run("apply")
    assert code == 1 and result["processes"][0]["result"] == "failed"
    monkeypatch.undo()
    if registered:  # removed, then freed: nothing left
        assert not proc.blobs() and not proc.tables
        return
    assert len(proc.blobs()) == 1  # the table may still come: the blob is kept
    table, count, base = late[0]
    proc.tables[table] = (count, base)  # the abandoned call completes after all
    assert run("recover")[0] == 0
    assert not proc.blobs() and not proc.tables


def test_an_allocation_left_running_stays_journaled_until_recovery_frees_the_memory_it_mapped(
    backend: FakeBackend, fx: Fixture, run: Runner, state_dir: Path
) -> None:
    """A remote mmap whose thread could not be stopped in time completes on its own (CallLeftRunning): the
    ahead-journaled intent must survive the failed apply, so that the next run frees what the call mapped."""
    proc = spawn(backend, fx)
    proc.fail.allocate_left_running = True
    code, result = run("apply")
    assert code == 1 and result["processes"][0]["result"] == "failed", result
    [record] = [json.loads(p.read_text()) for p in (state_dir / "journal").glob("*.json")]
    [journaled] = record["processes"]
    assert journaled["state"] == "staging" and journaled["blob_mapped"] is False
    [blob] = proc.blobs()  # the call mapped it after the engine gave up waiting
    assert journaled["blob_address"] == blob.start
    proc.fail.allocate_left_running = False
    code, result = run("recover")
    assert code == 0 and "blob freed" in result["recovered"][0]["note"], result
    assert not proc.blobs() and not list((state_dir / "journal").glob("*.json"))
    assert run("apply")[0] == 0 and set(proc.code().values()) == {"patched"}


def test_an_aborted_apply_is_journaled_and_archived(
    backend: FakeBackend, fx: Fixture, run: Runner, state_dir: Path
) -> None:
    proc = spawn(backend, fx)
    proc.fail.add_table = "no"
    run("apply")
    assert not list((state_dir / "journal").glob("*.json"))
    (done,) = (state_dir / "journal" / "done").glob("*.json")
    assert '"aborted"' in done.read_text()


def test_a_process_that_cannot_be_opened_is_reported_only_when_named(
    backend: FakeBackend, fx: Fixture, run: Runner
) -> None:
    proc = spawn(backend, fx)
    backend.unopenable[proc.info.pid] = "access denied: run as Administrator"
    assert run("apply")[1]["reasons"] == []
    _unused, result = run("apply", processes={"pids": [proc.info.pid]})
    assert "access denied" in result["reasons"][0]


def test_a_thread_exactly_at_an_entry_does_not_block_the_switch(backend: FakeBackend, fx: Fixture, run: Runner) -> None:
    proc = spawn(backend, fx)
    proc.threads[0].rip = proc.functions["fn0"].entry  # it decodes afresh on resume: old code or the new jump
    assert run("apply", retries=0)[0] == 0 and set(proc.code().values()) == {"patched"}
    assert run("rollback", retries=0)[0] == 0 and set(proc.code().values()) == {"base"}
