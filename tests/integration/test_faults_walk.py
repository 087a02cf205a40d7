"""Kill the engine at every fault step it declares and prove nothing is lost, against real busy programs under Wine.

The steps come from the engine itself (hotpatch.host.faults.STEPS), so a step added there is walked here without
a change to this file; a step of a verb this walk does not know fails the first test. Each kill is a real engine
process (``python -m hotpatch``) dying through REBOOTLESS_FAULT_STEP (``os._exit(99)``, no cleanup).

What test_engine_wine.py already proves (one busy process, apply_*/rollback_*/release_* steps, next run =
``recover``): the call result is old or new, recover + verify are clean, apply/rollback work again afterwards.
This walk adds:
- two busy processes in one run (a kill at a per-process step leaves the second one untouched or done, never half);
- the journal is not lost (an open record names the killed process) and the targets keep counting calls;
- the next run is each of ``recover``, ``apply`` and ``rollback`` in turn, and ends in the state it asks for;
- every blob is gone at the end (no anonymous executable mapping left behind in either target);
- a recovery killed in turn (at the steps recovery itself meets) is finished by the run after it;
- the cold path: every stage_*/unstage_* step with a running process holding the module, then the module file
  is exactly the base or the patched build, the next start loads it, and nothing is left beside it;
- between the named steps: real SIGKILLs spread over the time the engine has the target under ptrace, and an
  engine dying at any step of a remote system call or remote call of the Wine backend.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.host.faults import STEPS
from ansible_collections.rebootless.windows.plugins.plugin_utils._builder.build import BuildRequest, build
from tests.fixtures.pe import FixturePair
from tests.fixtures.wine import WineError, WineProcess
from tests.support.engine_cli import EngineCli, journal_records
from tests.support.fault_moments import moment_exists
from tests.support.procmem import exec_anon_regions, sample

pytestmark = [pytest.mark.wine, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
CASE = "gcc/new_helper"  # a new static function in the blob: relocations, unwind table, the lot
SPIN_THREADS = 2  # per process; two processes on a 2-CPU runner
# Which verb meets each step, by the step's prefix (faults.py groups them so).
VERB_OF_PREFIX = {"apply_": "apply", "rollback_": "rollback", "release_": "rollback", "stage_": "stage"}
VERB_OF_PREFIX["unstage_"] = "unstage"
NEXT_RUNS = ("recover", "apply", "rollback")
FINAL_PROCESS_STATES = {"rolled_back", "aborted", "retired"}


def verb_of(step: str) -> str:
    for prefix, verb in sorted(VERB_OF_PREFIX.items(), key=lambda kv: -len(kv[0])):
        if step.startswith(prefix):
            return verb
    raise AssertionError(f"fault step {step!r} belongs to no verb this walk knows: teach VERB_OF_PREFIX its verb")


PROCESS_STEPS = [s for s in STEPS if verb_of(s) in ("apply", "rollback")]
COLD_STEPS = [s for s in STEPS if verb_of(s) in ("stage", "unstage")]
# Steps the recovery of an interrupted switch passes through (restore, wait idle, remove table, free blob).
RECOVERY_STEPS = ["rollback_before_free", "release_after_table"]


def test_every_declared_fault_step_is_walked() -> None:
    assert sorted(PROCESS_STEPS + COLD_STEPS) == sorted(STEPS)
    assert set(RECOVERY_STEPS) <= set(STEPS)
    assert len(STEPS) == len(set(STEPS))


@pytest.fixture(scope="module")
def pair(pairs: dict[str, FixturePair]) -> FixturePair:
    return pairs[CASE]


@pytest.fixture(scope="module")
def package(pair: FixturePair, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("walk-package") / "walk.hpk"
    path.write_bytes(build(BuildRequest(str(pair.base), str(pair.patched), "walk", "1.0.0")).package)
    return path


@dataclass
class Busy:
    """A driver with threads spinning on the patched function; ``exec_anon`` before any patch (blob accounting)."""

    proc: WineProcess
    exec_anon: int

    @property
    def pid(self) -> int:
        return self.proc.linux_pid


@pytest.fixture(scope="module")
def busy(pair: FixturePair, prefix: Path) -> Iterator[list[Busy]]:
    """Two busy drivers shared by the process-step walk; every test leaves both on the base code."""
    with WineProcess.start(pair.argv("base"), prefix) as one, WineProcess.start(pair.argv("base"), prefix) as two:
        out = []
        for proc in (one, two):
            assert proc.request(f"spin {SPIN_THREADS} case_entry {pair.x}").startswith("spinning")
            out.append(Busy(proc, sample(proc.linux_pid).exec_anon))
        yield out


def wait_counting(proc: WineProcess, since: int, timeout: float = 20.0) -> int:
    """Wait until the driver's call counter passes ``since``; return it (its threads run, they are not stuck)."""
    deadline = time.monotonic() + timeout
    while True:
        calls = proc.stats().calls
        if calls > since:
            return calls
        assert time.monotonic() < deadline, f"{proc.exe_name}: no call completed for {timeout} s (threads stuck)"
        time.sleep(0.01)


def assert_only_old_or_new(proc: WineProcess, pair: FixturePair) -> None:
    stats = proc.stats()
    assert set(stats.results) <= {pair.base_result, pair.patched_result}, stats
    assert stats.errors == 0, stats
    assert int(proc.request(f"call case_entry {pair.x}")) in (pair.base_result, pair.patched_result)


def open_process_states(state_dir: Path) -> dict[int, list[str]]:
    """pid -> states of its processes' entries in open journal records."""
    out: dict[int, list[str]] = {}
    for record in journal_records(state_dir):
        for proc in record.get("processes", []):
            out.setdefault(int(proc["pid"]), []).append(proc["state"])
    return out


def verify_codes(engine: EngineCli, pids: list[int]) -> dict[int, str]:
    code, result = engine.inproc("verify", processes={"pids": pids})
    assert code == 0, result
    return {p["pid"]: p["code_after"] for p in result["processes"]}


@pytest.mark.slow
@pytest.mark.parametrize("step", PROCESS_STEPS)
def test_a_kill_at_each_process_step_loses_nothing_and_any_next_run_settles_both_processes(
    pair: FixturePair, package: Path, busy: list[Busy], tmp_path: Path, step: str
) -> None:
    if not moment_exists(step, package):
        pytest.skip(f"no {step} moment with this package: each function is switched in one write")
    engine = EngineCli(package, tmp_path / "state")
    pids = [b.pid for b in busy]
    verb = verb_of(step)
    if verb == "rollback":
        code, result = engine.inproc("apply", processes={"pids": pids})
        assert code == 0 and [p["result"] for p in result["processes"]] == ["patched", "patched"], result
    calls = [b.proc.stats().calls for b in busy]

    # One worker, so the kill lands at this step with the other process at a step boundary too (the walk is
    # exact); the random-moment kills below and test_engine_parallel cover everything in between.
    code, _unused = (
        engine(verb, fault=step, processes={"pids": pids}, workers=1)
        if verb == "apply"
        else engine(verb, fault=step, workers=1)
    )
    assert code == 99, f"the engine did not die at {step}"

    # The targets run on, only ever old or new code, and the journal still holds the killed run's intent.
    for b, before in zip(busy, calls, strict=True):
        wait_counting(b.proc, before)
        assert_only_old_or_new(b.proc, pair)
    states = open_process_states(tmp_path / "state")
    assert any(pid in states for pid in pids), f"journal lost at {step}: {journal_records(tmp_path / 'state')}"

    # The next run, whichever it is, leaves every process all base or all patched and the journal consistent.
    next_run = NEXT_RUNS[PROCESS_STEPS.index(step) % len(NEXT_RUNS)]
    code, result = engine(next_run, processes={"pids": pids}) if next_run == "apply" else engine(next_run)
    assert code == 0, result
    codes = verify_codes(engine, pids)
    assert set(codes) == set(pids) and set(codes.values()) <= {"base", "patched"}, codes
    if next_run == "apply":
        assert set(codes.values()) == {"patched"}, codes
    elif next_run == "rollback":
        assert set(codes.values()) == {"base"}, codes
    states = open_process_states(tmp_path / "state")
    for pid, code_after in codes.items():
        expected = ["applied"] if code_after == "patched" else []
        assert [s for s in states.get(pid, []) if s not in FINAL_PROCESS_STATES] == expected, (pid, states)

    # Back to base for the next step: nothing left open, no blob left mapped, calls still only old or new.
    code, result = engine.inproc("rollback")
    assert code == 0, result
    assert set(verify_codes(engine, pids).values()) == {"base"}
    assert journal_records(tmp_path / "state") == [], "every journal record is settled"
    for b in busy:
        assert sample(b.pid).exec_anon == b.exec_anon, f"a blob was left mapped: {exec_anon_regions(b.pid)}"
        assert_only_old_or_new(b.proc, pair)
        assert int(b.proc.request(f"call case_entry {pair.x}")) == pair.base_result


@pytest.mark.slow
@pytest.mark.parametrize("second", RECOVERY_STEPS)
def test_a_recovery_killed_in_turn_is_finished_by_the_next_run(
    pair: FixturePair, package: Path, busy: list[Busy], tmp_path: Path, second: str
) -> None:
    engine = EngineCli(package, tmp_path / "state")
    target = busy[0]
    pids = {"pids": [target.pid]}
    # Killed with every thread stopped and nothing written yet (this package's one function is switched with one
    # write, so no moment leaves it half switched): the recovery aborts the apply, then dies freeing the blob.
    assert engine("apply", fault="apply_after_quiesce", processes=pids)[0] == 99
    assert engine("recover", fault=second)[0] == 99
    wait_counting(target.proc, target.proc.stats().calls)
    assert_only_old_or_new(target.proc, pair)
    assert open_process_states(tmp_path / "state"), "the interrupted recovery's record is gone"
    code, result = engine("recover")
    assert code == 0, result
    assert verify_codes(engine, [target.pid]) == {target.pid: "base"}
    assert journal_records(tmp_path / "state") == []
    assert sample(target.pid).exec_anon == target.exec_anon, "the blob was freed twice or not at all"
    assert engine.inproc("apply", processes=pids)[0] == 0
    assert int(target.proc.request(f"call case_entry {pair.x}")) == pair.patched_result
    assert engine.inproc("rollback")[0] == 0
    assert sample(target.pid).exec_anon == target.exec_anon


def _module_state(module: Path, pair: FixturePair) -> str:
    if not module.exists():
        return "missing"
    data = module.read_bytes()
    return {pair.base.read_bytes(): "base", pair.patched.read_bytes(): "patched"}.get(data, "other")


def _leftovers(module: Path) -> list[str]:
    return sorted(p.name for p in module.parent.glob(f"{module.name}.rebootless-*"))


@pytest.mark.slow
@pytest.mark.parametrize("step", COLD_STEPS)
def test_a_kill_at_each_cold_path_step_leaves_a_loadable_module_and_any_next_run_settles_it(
    pair: FixturePair, package: Path, prefix: Path, tmp_path: Path, step: str
) -> None:
    app = tmp_path / "app"
    shutil.copytree(pair.base.parent, app)
    module = app / pair.module_name
    argv = [str(app / "driver.exe"), pair.module_name]
    engine = EngineCli(package, tmp_path / "state")
    where: dict[str, Any] = {"module_path": str(module)}
    verb = verb_of(step)
    with WineProcess.start(argv, prefix) as running:
        assert running.request(f"spin {SPIN_THREADS} case_entry {pair.x}").startswith("spinning")
        if verb == "unstage":
            assert engine.inproc("stage", **where)[0] == 0 and _module_state(module, pair) == "patched"
        calls = running.stats().calls

        assert engine(verb, fault=step, **where)[0] == 99, f"the engine did not die at {step}"
        state = _module_state(module, pair)
        # Only between the two renames is the path empty (a loaded DLL cannot be overwritten, only renamed aside).
        assert state in ({"base", "patched", "missing"} if step.endswith("_after_rename") else {"base", "patched"})
        assert [r for r in journal_records(tmp_path / "state") if r.get("module_path") == str(module)], "journal lost"
        wait_counting(running, calls)  # the running process keeps its loaded image
        assert int(running.request(f"call case_entry {pair.x}")) == pair.base_result

        next_run = ("recover", "stage", "unstage")[COLD_STEPS.index(step) % 3]
        code, result = engine(next_run, **where)
        assert code == 0, result
        state = _module_state(module, pair)
        assert state in {"base", "patched"}, state
        if next_run != "recover":
            assert state == ("patched" if next_run == "stage" else "base"), (next_run, state)
        assert journal_records(tmp_path / "state") == [] or state == "patched"
        # The next start loads whatever is on disk, and it is a whole module.
        with WineProcess.start(argv, prefix) as restarted:
            want = pair.patched_result if state == "patched" else pair.base_result
            assert int(restarted.request(f"call case_entry {pair.x}")) == want
        assert _leftovers(module) == ([f"{module.name}.rebootless-{_key12(package)}"] if state == "patched" else [])

        code, result = engine("unstage", **where)
        assert code == 0, result
        assert _module_state(module, pair) == "base" and _leftovers(module) == []
        assert journal_records(tmp_path / "state") == []
        assert running.stats().errors == 0


def _key12(package: Path) -> str:
    """The backup suffix of a staged module: the first 12 hex digits of the SHA-256 of manifest.json."""
    with zipfile.ZipFile(package) as archive:
        return hashlib.sha256(archive.read("manifest.json")).hexdigest()[:12]


KILLS = 24  # SIGKILLs at moments spread over the part of apply and rollback runs that touches the process


def traced(pid: int) -> bool:
    """Whether any thread of ``pid`` has a tracer now (the engine seized it: remote call or quiesce)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if "\nTracerPid:\t0\n" not in status:
            return True
    return False


def wait_traced(pid: int, engine: subprocess.Popen[str], timeout: float = 60.0) -> float | None:
    """Wait until the engine first seizes a thread of ``pid``; returns that moment (monotonic seconds), or None
    when the engine finished first (its stops can fall between two looks)."""
    deadline = time.monotonic() + timeout
    while not traced(pid):
        if engine.poll() is not None:
            return None
        assert time.monotonic() < deadline, "the engine never touched the process"
    return time.monotonic()


@pytest.fixture
def lone(pair: FixturePair, prefix: Path) -> Iterator[Busy]:
    """A busy driver of its own, for tests that may kill it."""
    with WineProcess.start(pair.argv("base"), prefix) as proc:
        assert proc.request(f"spin {SPIN_THREADS} case_entry {pair.x}").startswith("spinning")
        yield Busy(proc, sample(proc.linux_pid).exec_anon)


CALIBRATION_RUNS = 20  # runs allowed to catch each verb's window once (a fast run can slip between two polls)


@pytest.mark.slow
def test_sigkill_at_any_moment_of_apply_or_rollback_leaves_the_process_running_and_recoverable(
    pair: FixturePair, package: Path, lone: Busy, tmp_path: Path
) -> None:
    """Between the named steps too: real SIGKILLs at moments spread from the engine's first ptrace stop of the
    target to its exit (remote calls for allocation and unwind registration, quiesce, writes, release)."""
    engine = EngineCli(package, tmp_path / "state")
    pids = {"pids": [lone.pid]}
    windows: dict[str, float] = {}
    for _attempt in range(CALIBRATION_RUNS):
        if len(windows) == 2:
            break
        verb = "rollback" if "apply" in windows else "apply"
        proc = engine.spawn(verb, processes=pids) if verb == "apply" else engine.spawn(verb)
        first = wait_traced(lone.pid, proc)
        assert engine.finish(proc)[0] == 0
        if first is not None:
            windows[verb] = time.monotonic() - first
        elif verb == "rollback":  # the poll missed its stops: patch again so the rollback can be measured
            assert engine.inproc("apply", processes=pids)[0] == 0
        else:  # a missed apply left the process patched, and a second apply would change nothing: undo it
            assert engine.inproc("rollback")[0] == 0
    assert len(windows) == 2, f"the poll did not catch both verbs at work within {CALIBRATION_RUNS} runs: {windows}"
    outcomes: dict[str, int] = {"missed": 0}
    for i in range(KILLS):
        verb = "apply" if i % 2 == 0 else "rollback"
        if verb == "rollback":
            assert engine.inproc("apply", processes=pids)[0] == 0
        calls = lone.proc.stats().calls
        proc = engine.spawn(verb, processes=pids) if verb == "apply" else engine.spawn(verb)
        first = wait_traced(lone.pid, proc)
        if first is None:
            outcomes["missed"] += 1
        # The moment of the kill is the variable under test: a spin on the clock after the first stop.
        kill_at = (first or 0.0) + windows[verb] * (i // 2) / (KILLS // 2)
        while time.monotonic() < kill_at and proc.poll() is None:
            pass
        proc.kill()
        proc.communicate(timeout=30)
        wait_counting(lone.proc, calls)
        assert_only_old_or_new(lone.proc, pair)
        code, result = engine.inproc("recover")
        assert code == 0, (i, result)
        (state,) = verify_codes(engine, [lone.pid]).values()
        assert state in ("base", "patched"), (i, state)
        outcomes[f"{verb}->{state}"] = outcomes.get(f"{verb}->{state}", 0) + 1
        assert engine.inproc("rollback")[0] == 0
        assert journal_records(tmp_path / "state") == [], i
        assert sample(lone.pid).exec_anon == lone.exec_anon, f"kill {i}: blob left: {exec_anon_regions(lone.pid)}"
    assert outcomes["missed"] < KILLS // 4, outcomes  # most kills landed while the engine was at work


@pytest.mark.parametrize("where", ["syscall", "call"])
def test_an_engine_dying_at_any_step_of_a_remote_operation_leaves_the_process_running(lone: Busy, where: str) -> None:
    """Every ptrace request that drives the borrowed thread of a remote mmap (``syscall``) or of a call into
    RtlAddFunctionTable with its stub's mmap and munmap (``call``), the engine dying right before it or right
    after it: the thread finds its way back (the rt_sigreturn frame) and the process runs on, its borrowed main
    thread still answering requests (an interrupted read restarted, not failed)."""
    assert lone.proc.ready is not None
    base = hex(lone.proc.ready.module_base)
    deaths = 0
    for step in range(1, 200):
        outcomes = set()
        for moment in ("before", "after"):
            calls = lone.proc.stats().calls
            died = subprocess.run(
                [sys.executable, "-m", "tests.support.remote_death", str(lone.pid), base, where, str(step), moment],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert died.returncode in (1, 99), died.stderr
            outcomes.add(died.returncode)
            try:
                wait_counting(lone.proc, calls)
                stats = lone.proc.stats()
            except (WineError, OSError) as exc:
                pytest.fail(f"the target died after the engine died {moment} request {step} of a remote {where}: {exc}")
            assert stats.errors == 0, (step, moment, stats)
            assert not traced(lone.pid), "a thread is still traced after its tracer died"
        if outcomes == {1}:
            break
        deaths += 1
    print(f"remote {where}: {deaths} requests walked")
    assert deaths >= 5, f"the walk over a remote {where} found only {deaths} requests"
