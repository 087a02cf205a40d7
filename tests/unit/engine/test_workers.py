"""Several processes at once: each one wholly in one worker thread, results by PID, a journal that stays right.

ptrace (Wine) and a debug attach (Windows) bind a process to the thread that attached it, so the engine must
never touch one process from two threads. The fake backend here remembers the thread of every call per handle.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.errors import RequestError
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.host.journal import (
    Journal,
    PackageRef,
    ProcessRecord,
)
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.host.request import (
    DEFAULT_WORKERS,
    parse_request,
)
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.host.verbs import execute, for_each_process

from .fake_backend import FakeBackend, FakeHandle
from .images import Fixture, spawn

WORKERS = 3
ENGINE_ROOT = Path(__file__).resolve().parents[3] / "plugins" / "module_utils"


class ThreadRecordingBackend(FakeBackend):
    """A FakeBackend whose handles note the thread of each call; the first WORKERS opens wait for each other,
    which proves that many workers really run at once."""

    def __init__(self, together: int = WORKERS) -> None:
        super().__init__()
        self.threads_by_pid: dict[int, set[int]] = {}
        self.together = threading.Barrier(together, timeout=30)
        self.opens = 0

    def open(self, pid: int) -> FakeHandle:
        self.opens += 1
        if self.opens <= self.together.parties:
            self.together.wait()
        handle = super().open(pid)
        seen = self.threads_by_pid.setdefault(pid, set())
        seen.add(threading.get_ident())
        for name in ("modules", "read", "write", "allocate_near", "protect", "free", "quiesce", "close"):
            setattr(handle, name, _noting(getattr(handle, name), seen))
        return handle


def _noting(method: Any, seen: set[int]) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        seen.add(threading.get_ident())
        return method(*args, **kwargs)

    return call


@pytest.fixture
def threaded() -> ThreadRecordingBackend:
    return ThreadRecordingBackend()


def _request(fx: Fixture, state_dir: Path, **keys: Any) -> dict[str, Any]:
    return {
        "package": str(fx.package),
        "state_dir": str(state_dir),
        "allow_unsigned": True,
        "retry_delay_ms": 0,
        **keys,
    }


def _run(backend: FakeBackend, fx: Fixture, state_dir: Path, verb: str, workers: int) -> tuple[int, dict[str, Any]]:
    code, result = execute(parse_request(verb, _request(fx, state_dir)), backend, workers=workers)
    return code, result.to_dict()


def test_apply_and_rollback_handle_each_process_in_one_worker_thread_and_report_by_pid(
    threaded: ThreadRecordingBackend, fx: Fixture, state_dir: Path
) -> None:
    procs = [spawn(threaded, fx, name=f"svc{n}.exe") for n in range(7)]
    code, result = _run(threaded, fx, state_dir, "apply", WORKERS)
    assert code == 0, result
    assert [p["pid"] for p in result["processes"]] == sorted(p.info.pid for p in procs)
    assert {p["result"] for p in result["processes"]} == {"patched"}
    assert all(len(threads) == 1 for threads in threaded.threads_by_pid.values()), threaded.threads_by_pid
    assert len(set().union(*threaded.threads_by_pid.values())) == WORKERS
    assert not threaded.open_handles and not any(p.quiesced for p in procs)
    assert {code for p in procs for code in p.code().values()} == {"patched"}

    threaded.threads_by_pid.clear()
    threaded.opens = 0
    threaded.together.reset()
    code, result = _run(threaded, fx, state_dir, "rollback", WORKERS)
    assert code == 0, result
    assert [p["pid"] for p in result["processes"]] == sorted(p.info.pid for p in procs)
    assert {p["result"] for p in result["processes"]} == {"rolled_back"}
    assert all(len(threads) == 1 for threads in threaded.threads_by_pid.values()), threaded.threads_by_pid
    assert {code for p in procs for code in p.code().values()} == {"base"}


def test_a_parallel_apply_journals_every_process_as_applied(backend: FakeBackend, fx: Fixture, state_dir: Path) -> None:
    procs = [spawn(backend, fx, name=f"svc{n}.exe") for n in range(9)]
    code, result = _run(backend, fx, state_dir, "apply", 4)
    assert code == 0, result
    records = [json.loads(p.read_text()) for p in (state_dir / "journal").glob("*.json")]
    assert len(records) == 1
    journaled = {p["pid"]: p["state"] for p in records[0]["processes"]}
    assert journaled == {p.info.pid: "applied" for p in procs}


def test_concurrent_saves_share_writes_and_each_returns_with_its_own_change_on_disk(tmp_path: Path) -> None:
    journal = Journal(str(tmp_path))
    record = journal.new_apply(PackageRef("fix", "1.0.0", "appcore.dll", "k" * 64, "s" * 64))
    procs = [
        ProcessRecord(100 + n, f"start-{n}", "appsvc.exe", None, 0x180000000, "/x", 0x190000000, 4096) for n in range(5)
    ]
    for proc in procs:
        journal.add_process(record, proc)
    journal.save(record)
    first_write_started, let_it_finish = threading.Event(), threading.Event()
    write = journal._write
    on_disk: dict[int, str] = {}

    def slow_first_write(path: str, text: str) -> None:
        if not first_write_started.is_set():
            first_write_started.set()
            assert let_it_finish.wait(30)
        write(path, text)

    journal._write = slow_first_write  # type: ignore[method-assign]

    def change_and_save(proc: ProcessRecord) -> None:
        journal.touch(proc, "switching")
        journal.save(record)
        on_disk[proc.pid] = {p["pid"]: p["state"] for p in json.loads(Path(record.path).read_text())["processes"]}[
            proc.pid
        ]

    writes_before = journal.writes
    first = threading.Thread(target=change_and_save, args=(procs[0],))
    first.start()
    assert first_write_started.wait(30)
    others = [threading.Thread(target=change_and_save, args=(proc,)) for proc in procs[1:]]
    for thread in others:
        thread.start()
    commit = journal._commits[record.path]
    while commit._asked < 1 + len(procs):  # every later caller has asked for its save (each waits in save)
        threading.Event().wait(0.001)
    let_it_finish.set()
    for thread in [first, *others]:
        thread.join(30)
    assert on_disk == {proc.pid: "switching" for proc in procs}
    assert journal.writes - writes_before == 2  # the first caller's write, then one for all four others


def test_an_exception_in_a_worker_reaches_the_caller_and_stops_handing_out_items() -> None:
    ran: list[int] = []

    def work(item: int) -> int:
        ran.append(item)
        if item == 2:
            raise RuntimeError("boom")
        return item * 10

    with pytest.raises(RuntimeError, match="boom"):
        for_each_process(list(range(6)), work, 1)
    assert ran == [0, 1, 2]
    assert for_each_process(list(range(6)), lambda item: item * 10, 4) == [0, 10, 20, 30, 40, 50]
    ran.clear()
    with pytest.raises(RuntimeError, match="boom"):
        for_each_process(list(range(40)), work, 4)


def test_the_workers_request_field_defaults_to_8_and_takes_1_to_64() -> None:
    assert parse_request("apply", {"package": "/fix.hpk"}).workers == DEFAULT_WORKERS == 8
    assert parse_request("rollback", {"package": "/fix.hpk", "workers": 1}).workers == 1
    assert parse_request("plan", {"package": "/fix.hpk", "workers": 64}).workers == 64


@pytest.mark.parametrize("bad", [0, 65, -3, True, 2.5, "4", None, [4]])
def test_a_workers_value_outside_1_to_64_is_refused_with_its_range(bad: object) -> None:
    with pytest.raises(RequestError) as caught:
        parse_request("apply", {"package": "/fix.hpk", "workers": bad})
    assert str(caught.value) == "workers must be an integer from 1 to 64"


def test_the_engine_cli_accepts_workers_and_refuses_a_bad_one_with_exit_2(tmp_path: Path) -> None:
    def cli(workers: object) -> tuple[int, dict[str, Any]]:
        path = tmp_path / "request.json"
        path.write_text(json.dumps({"state_dir": str(tmp_path / "s"), "backend": "wine", "workers": workers}))
        done = subprocess.run(
            [sys.executable, "-m", "hotpatch", "status", "--request", str(path)],
            cwd=ENGINE_ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        return done.returncode, json.loads(done.stdout)

    code, result = cli(4)
    assert code == 0 and result["ok"], result
    code, result = cli(0)
    assert (code, result["error"]) == (2, {"kind": "request", "message": "workers must be an integer from 1 to 64"})


@pytest.mark.parametrize("workers", [1, WORKERS])
def test_apply_and_rollback_use_as_many_worker_threads_as_the_request_asks(
    workers: int, fx: Fixture, state_dir: Path
) -> None:
    backend = ThreadRecordingBackend(together=workers)
    for n in range(6):
        spawn(backend, fx, name=f"svc{n}.exe")
    code, result = execute(parse_request("apply", _request(fx, state_dir, workers=workers)), backend)
    assert code == 0, result.to_dict()
    threads = set().union(*backend.threads_by_pid.values())
    assert len(threads) == workers
    if workers == 1:  # one worker: everything in the calling thread, one process after the other
        assert threads == {threading.get_ident()}

    backend.threads_by_pid.clear()
    backend.opens = 0
    backend.together.reset()
    code, result = execute(parse_request("rollback", _request(fx, state_dir, workers=workers)), backend)
    assert code == 0, result.to_dict()
    assert len(set().union(*backend.threads_by_pid.values())) == workers
    assert not backend.open_handles


def test_one_worker_and_four_workers_give_the_same_results(tmp_path: Path, fx: Fixture) -> None:
    def outcome(workers: int) -> list[list[tuple[Any, ...]]]:
        backend = FakeBackend()
        procs = [spawn(backend, fx, name=f"svc{n}.exe") for n in range(9)]
        state_dir = tmp_path / f"state-{workers}"
        results = []
        for verb in ("plan", "apply", "apply", "rollback"):
            code, result = execute(parse_request(verb, _request(fx, state_dir, workers=workers)), backend)
            document = result.to_dict()
            assert code == 0, document
            results.append(
                [(p["pid"], p["name"], p["result"], p["code_before"], p["code_after"]) for p in document["processes"]]
                + [("changed", document["changed"])]
            )
        assert {code for p in procs for code in p.code().values()} == {"base"}
        return results

    one, four = outcome(1), outcome(4)
    assert one == four
    assert [{row[2] for row in verb_rows[:-1]} for verb_rows in one] == [
        {"would_patch"},
        {"patched"},
        {"already_patched"},
        {"rolled_back"},
    ]
