"""rollback: originals back under quiesce, the blob freed only when no thread can run it, dead processes retired."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import Runner
from .fake_backend import FakeBackend, FakeProcess
from .images import Fixture, spawn


def test_rollback_restores_the_base_code_and_frees_everything(
    backend: FakeBackend, fx: Fixture, run: Runner, state_dir: Path
) -> None:
    proc = spawn(backend, fx)
    run("apply")
    code, result = run("rollback")
    assert code == 0 and result["changed"]
    entry = result["processes"][0]
    assert (entry["result"], entry["code_before"], entry["code_after"]) == ("rolled_back", "patched", "base")
    assert entry["pause_us"] >= 1
    assert set(proc.code().values()) == {"base"} and not proc.blobs() and not proc.tables
    assert proc.regions[0].data == bytearray(fx.base_image)
    assert not list((state_dir / "journal").glob("*.json")), "a finished journal is archived"


def test_rollback_restores_each_function_in_one_write_or_entry_first(
    backend: FakeBackend, fx: Fixture, run: Runner
) -> None:
    proc = spawn(backend, fx)
    run("apply")
    proc.log.clear()
    run("rollback")
    writes = [(int(c.split()[-1], 16), int(c.split()[-2])) for c in proc.log if c.startswith("write code")]
    e0, e1, e2 = (f.entry for f in proc.functions.values())
    # last function first; fn0's jumps straddle a page: its entry is restored before its padding
    assert writes == [(e2 - 5, 7), (e1 - 5, 7), (e0, 2), (e0 - 5, 5)]
    assert proc.log.index("delete_function_table") < proc.log.index("free")


def test_second_rollback_changes_nothing(backend: FakeBackend, fx: Fixture, run: Runner) -> None:
    spawn(backend, fx)
    run("apply")
    run("rollback")
    code, result = run("rollback")
    assert code == 0 and result["changed"] is False and result["processes"] == []


def test_apply_after_rollback_patches_again(backend: FakeBackend, fx: Fixture, run: Runner) -> None:
    proc = spawn(backend, fx)
    for _unused in range(3):
        assert run("apply")[1]["processes"][0]["result"] == "patched"
        assert run("rollback")[1]["processes"][0]["result"] == "rolled_back"
    assert set(proc.code().values()) == {"base"} and not proc.blobs()


def test_plan_absent_predicts_rollback(backend: FakeBackend, fx: Fixture, run: Runner) -> None:
    proc = spawn(backend, fx)
    run("apply")
    code, result = run("plan", state="absent")
    assert code == 0 and result["processes"][0]["result"] == "would_roll_back" and not result["changed"]
    assert set(proc.code().values()) == {"patched"}


def test_blob_in_use_is_kept_until_a_later_run_frees_it(backend: FakeBackend, fx: Fixture, run: Runner) -> None:
    proc = spawn(backend, fx)
    run("apply")
    blob = proc.blobs()[0]
    proc.threads[0].rip = blob.start + 4  # a thread is still running the patched code
    code, result = run("rollback", retries=1)
    entry = result["processes"][0]
    assert code == 0 and entry["result"] == "rolled_back" and "blob kept" in entry["reason"]
    assert set(proc.code().values()) == {"base"} and proc.blobs() == [blob] and proc.tables
    proc.threads[0].rip = 0x7FF00000  # it returned
    code, result = run("recover")
    assert code == 0 and not proc.blobs() and not proc.tables
    assert result["recovered"][0]["pid"] == proc.info.pid


def test_return_address_into_the_blob_keeps_it(backend: FakeBackend, fx: Fixture, run: Runner) -> None:
    proc = spawn(backend, fx)
    run("apply")
    proc.threads[1].stack = (proc.blobs()[0].start + 0x10,)
    run("rollback", retries=0)
    assert len(proc.blobs()) == 1
    proc.threads[1].stack = ()
    run("recover")
    assert not proc.blobs()


def test_a_thread_on_the_jump_fails_rollback_and_keeps_the_patch(
    backend: FakeBackend, fx: Fixture, run: Runner, state_dir: Path
) -> None:
    proc = spawn(backend, fx)
    run("apply")
    proc.threads[0].rip = proc.functions["fn0"].entry - 5  # between the short and the long jump
    code, result = run("rollback", retries=2)
    assert code == 1 and result["processes"][0]["result"] == "failed"
    assert set(proc.code().values()) == {"patched"}
    (journal,) = (state_dir / "journal").glob("*.json")
    assert json.loads(journal.read_text())["processes"][0]["state"] == "applied"


def test_write_failure_during_rollback_keeps_the_process_patched(
    backend: FakeBackend, fx: Fixture, run: Runner
) -> None:
    proc = spawn(backend, fx)
    run("apply")
    proc.fail.code_write_number = proc.code_writes + 3
    code, result = run("rollback")
    assert code == 1 and "undone" in result["processes"][0]["reason"]
    assert set(proc.code().values()) == {"patched"}
    proc.fail.code_write_number = None
    assert run("rollback")[0] == 0 and set(proc.code().values()) == {"base"}


def test_a_dead_process_is_retired(backend: FakeBackend, fx: Fixture, run: Runner, state_dir: Path) -> None:
    proc = spawn(backend, fx)
    run("apply")
    backend.kill(proc.info.pid)
    code, result = run("rollback")
    assert code == 0 and result["processes"] == []
    (done,) = (state_dir / "journal" / "done").glob("*.json")
    assert json.loads(done.read_text())["processes"][0]["state"] == "retired"


def test_a_reused_pid_is_not_taken_for_the_patched_process(backend: FakeBackend, fx: Fixture, run: Runner) -> None:
    proc = spawn(backend, fx)
    run("apply")
    backend.kill(proc.info.pid)
    reborn: FakeProcess = spawn(backend, fx)
    backend.kill(reborn.info.pid)
    reborn.info = type(proc.info)(proc.info.pid, proc.info.name, "a later start", proc.info.windows_pid)
    backend.add(reborn)
    code, result = run("apply")
    assert code == 0 and result["processes"][0]["result"] == "patched"
    assert result["recovered"][0]["to"] == "retired"


def test_bytes_changed_by_someone_else_are_not_rolled_back(backend: FakeBackend, fx: Fixture, run: Runner) -> None:
    proc = spawn(backend, fx)
    run("apply")
    proc.regions[0].data[proc.functions["fn1"].entry - proc.regions[0].start] = 0xC3
    code, result = run("rollback")
    assert code == 1 and "changed since the apply" in result["processes"][0]["reason"]
