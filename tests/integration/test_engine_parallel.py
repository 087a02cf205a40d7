"""The engine on several real Wine processes at once: worker threads, each tracing its own processes.

Busy drivers (tests/fixtures/pe) are patched and rolled back by one verb with several workers; every process ends
on the expected code, answers only old or new results, and the results come in PID order. A pause also never
leaves Python's garbage collector off, and a ptrace stop works from any thread that does all of its own work.
"""

from __future__ import annotations

import gc
import json
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.backends import _stop
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.host.request import parse_request
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.host.verbs import execute
from tests.fixtures.pe import FixturePair
from tests.fixtures.wine import WineProcess
from tests.integration.test_engine_wine import package_for

pytestmark = [pytest.mark.wine, pytest.mark.integration]

PROCESSES = 5
WORKERS = 3
SPIN_THREADS = 2


@pytest.fixture(scope="module")
def pair(pairs: dict[str, FixturePair]) -> FixturePair:
    return pairs["gcc/changed_constant"]


@pytest.fixture
def drivers(pair: FixturePair, prefix: Path) -> Iterator[list[WineProcess]]:
    with ExitStack() as stack:
        procs = [stack.enter_context(WineProcess.start(pair.argv("base"), prefix)) for _unused in range(PROCESSES)]
        for proc in procs:
            assert proc.request(f"spin {SPIN_THREADS} case_entry {pair.x}").startswith("spinning")
        yield procs


def _run(verb: str, package: Path, state: Path, pids: list[int]) -> tuple[int, dict[str, Any]]:
    request = {
        "package": str(package),
        "state_dir": str(state),
        "backend": "wine",
        "allow_unsigned": True,
        "processes": {"pids": pids},
    }
    code, result = execute(parse_request(verb, request), workers=WORKERS)
    return code, result.to_dict()


def test_several_busy_processes_are_patched_and_rolled_back_at_once_and_reported_by_pid(
    pair: FixturePair, drivers: list[WineProcess], tmp_path: Path
) -> None:
    package = package_for(pair, tmp_path)
    pids = [proc.linux_pid for proc in drivers]
    code, result = _run("apply", package, tmp_path / "state", pids)
    assert code == 0, result
    assert [p["pid"] for p in result["processes"]] == sorted(pids)
    assert {p["result"] for p in result["processes"]} == {"patched"}, result["reasons"]
    assert all(p["pause_us"] > 0 for p in result["processes"])
    for proc in drivers:
        assert int(proc.request(f"call case_entry {pair.x}")) == pair.patched_result
    journals = list((tmp_path / "state" / "journal").glob("*.json"))
    assert len(journals) == 1
    assert {p["pid"]: p["state"] for p in json.loads(journals[0].read_text())["processes"]} == dict.fromkeys(
        pids, "applied"
    )

    code, result = _run("rollback", package, tmp_path / "state", pids)
    assert code == 0, result
    assert [p["pid"] for p in result["processes"]] == sorted(pids)
    assert {p["result"] for p in result["processes"]} == {"rolled_back"}, result["reasons"]
    for proc in drivers:
        assert int(proc.request(f"call case_entry {pair.x}")) == pair.base_result
        stats = proc.stats()
        assert set(stats.results) <= {pair.base_result, pair.patched_result}, stats
        assert stats.errors == 0, stats
    assert not list((tmp_path / "state" / "journal").glob("*.json")), "every record settled and archived"


def test_threads_stopping_processes_side_by_side_keep_the_garbage_collector_off_until_the_last_resumes(
    drivers: list[WineProcess],
) -> None:
    """Each thread stops and releases its own process (ptrace binds tracees to their tracer thread)."""
    assert gc.isenabled()
    both_stopped = threading.Barrier(2, timeout=30)
    first_released = threading.Event()
    seen: dict[str, bool] = {}

    def hold(proc: WineProcess, name: str, release_first: bool) -> None:
        stopped = _stop.stop_all(proc.linux_pid)
        try:
            seen[f"{name} stopped"] = not gc.isenabled()
            both_stopped.wait()
            if not release_first:
                assert first_released.wait(30)
                seen[f"{name} after the other resumed"] = not gc.isenabled()
        finally:
            stopped.release()
            if release_first:
                first_released.set()

    threads = [
        threading.Thread(target=hold, args=(drivers[0], "first", True)),
        threading.Thread(target=hold, args=(drivers[1], "second", False)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert seen == {"first stopped": True, "second stopped": True, "second after the other resumed": True}
    assert gc.isenabled()
    for proc in drivers[:2]:
        assert proc.stats().errors == 0  # resumed and answering
