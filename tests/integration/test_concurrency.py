"""Two engines on one host at once, and two ansible-playbook runs against one host at once: never both patching.

Engines: a real engine (``python -m hotpatch``) is frozen (SIGSTOP) while it holds the host lock, so the overlap
is certain rather than likely. A second engine with a short lock_timeout_s fails cleanly (exit 6, kind "lock",
the holder named, the target and the journal untouched); a third one with a long timeout waits, and once the
first finishes it finds the work done (already_patched, changed false). Then two rollbacks race unfrozen, and
an apply races a rollback (the end state is all patched with one applied record, or all base with none).

Playbooks: playbooks/hotpatch.yml twice at the same moment on one private demo host (its own fleet root and port)
under the load generator: both succeed, exactly one reports the apply task changed, the service is patched once
(one applied journal record) and no request failed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.rebootless.windows.plugins.plugin_utils._builder.build import BuildRequest, build
from demo.fleet import Fleet, free_base_port
from demo.loadgen import LoadGen, Target
from demo.main_job import REPO_ROOT, build_demo_package, playbook_command, playbook_environment
from tests.fixtures.pe import FixturePair, build_all
from tests.fixtures.wine import WineProcess, wine_prefix
from tests.support.engine_cli import EngineCli, journal_records

pytestmark = [pytest.mark.wine, pytest.mark.integration]

CASE = "gcc/changed_constant"
APPLY_TASK = "TASK [rebootless.windows.hotpatch : Apply | hotpatch the running processes]"
APPLY_PHASE = "TASK [rebootless.windows.hotpatch : Apply] "


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout} s"
        time.sleep(0.005)


def holds_lock(state_dir: Path, pid: int) -> bool:
    """Whether engine ``pid`` holds the host lock: the lock file names its holder once taken (host/lock.py)."""
    try:
        return (state_dir / "engine.lock").read_text().strip() == f"pid {pid}"
    except FileNotFoundError:
        return False


def has_open(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open (a waiting engine keeps the lock file open while it polls)."""
    try:
        return any(os.readlink(fd) == str(path) for fd in Path(f"/proc/{pid}/fd").iterdir())
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.fixture(scope="module")
def pair() -> FixturePair:
    try:
        return build_all()[CASE]
    except FileNotFoundError as exc:
        pytest.skip(f"toolchain missing: {exc}")


@pytest.fixture
def busy(pair: FixturePair) -> Iterator[WineProcess]:
    with WineProcess.start(pair.argv("base"), wine_prefix()) as proc:
        assert proc.request(f"spin 2 case_entry {pair.x}").startswith("spinning")
        yield proc


def test_a_second_engine_fails_cleanly_or_waits_while_the_first_holds_the_lock(
    pair: FixturePair, busy: WineProcess, tmp_path: Path
) -> None:
    package = tmp_path / "fix.hpk"
    package.write_bytes(build(BuildRequest(str(pair.base), str(pair.patched), "fix", "1.0.0")).package)
    state = tmp_path / "state"
    engine = EngineCli(package, state)
    pids = {"pids": [busy.linux_pid]}

    first = engine.spawn("apply", processes=pids)
    try:
        wait_for(lambda: holds_lock(state, first.pid), "the first engine holding the lock")
        os.kill(first.pid, signal.SIGSTOP)  # frozen mid-run, lock held

        code, result = engine("apply", processes=pids, lock_timeout_s=0.5)
        assert code == 6 and result["error"]["kind"] == "lock", result
        assert f"pid {first.pid}" in result["error"]["message"] and "lock_timeout_s" in result["error"]["message"]
        assert result["processes"] == [] and result["changed"] is False

        waiting = engine.spawn("apply", processes=pids, lock_timeout_s=60)
        wait_for(lambda: has_open(waiting.pid, state / "engine.lock"), "the third engine waiting on the lock")
        assert waiting.poll() is None
    finally:
        os.kill(first.pid, signal.SIGCONT)
    code, result = engine.finish(first)
    assert code == 0 and result["changed"] is True and result["processes"][0]["result"] == "patched", result
    code, result = engine.finish(waiting)
    assert code == 0 and result["changed"] is False, result
    assert result["processes"][0]["result"] == "already_patched"

    assert int(busy.request(f"call case_entry {pair.x}")) == pair.patched_result
    applied = [p for r in journal_records(state) for p in r.get("processes", []) if p["state"] == "applied"]
    assert [p["pid"] for p in applied] == [busy.linux_pid], journal_records(state)

    racing = [engine.spawn("rollback"), engine.spawn("rollback")]
    results = [engine.finish(p) for p in racing]
    assert [code for code, _unused in results] == [0, 0], results
    assert sorted(r["changed"] for _unused, r in results) == [False, True], results
    assert int(busy.request(f"call case_entry {pair.x}")) == pair.base_result
    assert journal_records(state) == []
    stats = busy.stats()
    assert set(stats.results) <= {pair.base_result, pair.patched_result} and stats.errors == 0, stats


RACES = 4


def test_an_apply_and_a_rollback_racing_end_all_patched_or_all_base(
    pair: FixturePair, busy: WineProcess, tmp_path: Path
) -> None:
    package = tmp_path / "fix.hpk"
    package.write_bytes(build(BuildRequest(str(pair.base), str(pair.patched), "fix", "1.0.0")).package)
    state = tmp_path / "state"
    engine = EngineCli(package, state)
    pids = {"pids": [busy.linux_pid]}
    for race in range(RACES):
        apply, rollback = engine.spawn("apply", processes=pids), engine.spawn("rollback")
        assert [engine.finish(apply)[0], engine.finish(rollback)[0]] == [0, 0], race
        code, result = engine.inproc("verify", processes=pids)
        assert code == 0, result
        after = result["processes"][0]["code_after"]
        open_states = [p["state"] for r in journal_records(state) for p in r.get("processes", [])]
        assert (after, open_states) in (("patched", ["applied"]), ("base", [])), (race, after, open_states)
        assert int(busy.request(f"call case_entry {pair.x}")) == (
            pair.patched_result if after == "patched" else pair.base_result
        )
        assert engine.inproc("rollback")[0] == 0
    stats = busy.stats()
    assert set(stats.results) <= {pair.base_result, pair.patched_result} and stats.errors == 0, stats


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    try:
        build_all()
    except FileNotFoundError as exc:
        pytest.skip(f"toolchain missing: {exc}")
    f = Fleet(tmp_path_factory.mktemp("concurrency-fleet"))
    try:
        f.up(hosts=1, base_port=free_base_port(1), mismatch_host=0, timeout=60)
        yield f
    finally:
        f.down()


def apply_task_outcome(output: str) -> str:
    """The first status word printed after the role's apply task ("changed", "ok", "fatal", "skipping"); when
    the run never reached it, that of the role's Apply phase (skipped when the plan found nothing to do)."""
    _unused, found, rest = output.partition(APPLY_TASK)
    if not found:
        _unused, found, rest = output.partition(APPLY_PHASE)
    assert found, output[-3000:]
    match = re.search(r"^(changed|ok|fatal|skipping|failed): \[", rest, re.M)
    assert match, rest[:2000]
    return match.group(1)


@pytest.mark.slow
def test_two_playbook_runs_at_once_patch_the_host_once_and_only_one_reports_changed(
    fleet: Fleet, tmp_path: Path
) -> None:
    inventory = fleet.inventory_path
    host = fleet.hosts()[0]
    package = build_demo_package(tmp_path / "packages").path
    env = playbook_environment()
    runs = []
    gen = LoadGen([Target(host, "127.0.0.1", fleet.load_host(host).port)], rate=40.0).start()
    try:
        for name in ("first", "second"):
            cmd = playbook_command(inventory, package, tmp_path / f"report-{name}", {"hotpatch_waves": [1]})
            runs.append(
                subprocess.Popen(
                    cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
                )
            )
        outputs = [p.communicate(timeout=600)[0] for p in runs]
    finally:
        load = gen.stop()
    assert [p.returncode for p in runs] == [0, 0], [o[-3000:] for o in outputs]
    # Either both runs reach the engine (one patches, the other finds it patched under the host lock), or one
    # plans only after the other has patched and skips its apply (decision table row 2). Exactly one changes.
    outcomes = sorted(apply_task_outcome(o) for o in outputs)
    assert outcomes in (["changed", "ok"], ["changed", "skipping"]), [o[-3000:] for o in outputs]

    reports = [json.loads((tmp_path / f"report-{n}" / "hotpatch-report.json").read_text()) for n in ("first", "second")]
    entries: list[dict[str, Any]] = [next(h for h in r["hosts"] if h["host"] == host) for r in reports]
    second = "hotpatched" if outcomes == ["changed", "ok"] else "skipped"
    assert sorted(e["result"] for e in entries) == sorted(["hotpatched", second]), entries
    results = sorted(p["result"] for e in entries for p in e["processes"])
    assert results == ["already_patched", "patched"], entries

    assert fleet.request(host, "VERSION") == "appcore 1.0.1"
    state = fleet.host_dir(host) / "ProgramData" / "rebootless" / "state"
    applied = [p for r in journal_records(state) for p in r.get("processes", []) if p["state"] == "applied"]
    assert len(applied) == 1, journal_records(state)
    assert load.sent > 0 and load.failed == 0, load.targets[host].failures


@pytest.mark.parametrize("verb", ["verify", "plan"])
def test_a_reader_during_an_unfinished_apply_does_not_blame_another_tool(
    pair: FixturePair, busy: WineProcess, tmp_path: Path, verb: str
) -> None:
    package = tmp_path / "fix.hpk"
    package.write_bytes(build(BuildRequest(str(pair.base), str(pair.patched), "fix", "1.0.0")).package)
    engine = EngineCli(package, tmp_path / "state")
    pids = {"pids": [busy.linux_pid]}
    # The state a reader meets while a live engine sits between its last jump and its journal's completion.
    assert engine("apply", fault="apply_after_switch", processes=pids)[0] == 99
    code, result = engine(verb, processes=pids)
    reasons = " ".join(str(p.get("reason")) for p in result.get("processes", []))
    try:
        assert "did not journal" not in reasons, reasons
        assert code in (0, 6), result
    finally:
        assert engine.inproc("recover")[0] == 0 and engine.inproc("rollback")[0] == 0
