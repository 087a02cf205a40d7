"""Profile where the engine's pause goes (Wine backend): time spent in each phase while a process is stopped.

Runs apply + rollback of a bench package (10 functions by default) on driver.exe with busy threads (like
bench_engine.py), with timers wrapped around the calls the pause is made of: seize/interrupt, waiting for each
stop, register reads, /proc task listings, SCHED_FIFO setup/restore, the conflict check, the writes of the
switch and restore, and the detach. Everything else inside the pause is reported as ``other``. The wrappers add
about 1 µs per call, so the total here runs a little above the engine's own ``pause_us``.

    .venv/bin/python bench/profile_pause.py [--functions 10] [--threads 16] [--rounds 30]
    # writes bench/results/pause_profile.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / ".collections")]  # the repo (bench, tests) and the collection
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.backends import (  # noqa: E402
    _ptrace,
    _stop,
    wine,
)
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.host import quiesce  # noqa: E402
from bench import bench_engine  # noqa: E402
from tests.fixtures.pe import build_all  # noqa: E402
from tests.fixtures.wine import WineProcess, wine_prefix  # noqa: E402

# Timed calls that run outside the pause (before the first PTRACE_INTERRUPT or after the last detach): reported,
# but not subtracted when ``other_us`` (the pause's untimed rest: Python between the calls) is worked out.
OUTSIDE_PAUSE = ("seize", "sched_fifo_on", "sched_fifo_off", "task_ids", "detach_lingering")
_CURRENT: list[dict[str, float]] = []  # the phases of the pause in progress (empty: none)
_PAUSES: list[dict[str, float]] = []  # finished pauses of the current verb, in order


def _timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter_ns()
        try:
            return function(*args, **kwargs)
        finally:
            if _CURRENT:
                phases = _CURRENT[0]
                phases[f"{name}_us"] = phases.get(f"{name}_us", 0.0) + (time.perf_counter_ns() - started) / 1000.0
                phases[f"{name}_calls"] = phases.get(f"{name}_calls", 0.0) + 1

    return wrapper


def _pause_start(function: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _CURRENT[:] = [{"with_stacks": float(bool(kwargs.get("with_stacks")))}]
        quiesced = function(*args, **kwargs)
        stopped = quiesced.stopped
        _CURRENT[0]["stopping_wall_us"] = (stopped.all_stopped_ns - stopped.started_ns) / 1000.0
        _CURRENT[0]["tasks"] = float(len(stopped.tasks))
        return quiesced

    return wrapper


def _pause_end(function: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        pause = function(*args, **kwargs)
        if _CURRENT:
            phases = _CURRENT.pop()
            outside = {f"{name}_us" for name in OUTSIDE_PAUSE}
            timed = sum(
                v for k, v in phases.items() if k.endswith("_us") and not k.endswith("_wall_us") and k not in outside
            )
            phases["pause_us"] = float(pause)
            phases["other_us"] = float(pause) - timed
            phases["held_wall_us"] = float(pause) - phases["stopping_wall_us"]
            _PAUSES.append(phases)
        return pause

    return wrapper


def _instrument() -> None:
    """Wrap the calls a pause is made of (in the modules that call them, so the engine's code runs unchanged)."""
    for module, attr, name in (
        (_stop._ptrace, "seize", "seize"),
        (_stop._ptrace, "interrupt", "interrupt"),
        (_stop._ptrace, "wait_stop", "wait_stop"),
        (_stop._ptrace, "get_regs", "get_regs"),
        (_stop._ptrace, "detach", "detach"),
        (_ptrace, "task_state", "task_state"),
        (_stop, "task_ids", "task_ids"),
        (_stop, "_realtime", "sched_fifo_on"),
        (_stop, "_restore_scheduling", "sched_fifo_off"),
        (_stop, "detach_lingering", "detach_lingering"),
        (quiesce, "_conflict", "conflict_check"),
        (wine.WineProcess, "write", "write"),
        (wine.WineProcess, "read", "read"),
    ):
        if hasattr(module, attr):
            setattr(module, attr, _timed(name, getattr(module, attr)))
    wine.WineProcess.quiesce = _pause_start(wine.WineProcess.quiesce)  # type: ignore[method-assign]
    wine.WineQuiesced.resume = _pause_end(wine.WineQuiesced.resume)  # type: ignore[method-assign]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--functions", type=int, default=10)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "pause_profile.json")
    args = parser.parse_args()
    _instrument()
    load_at_start = os.getloadavg()
    prefix = wine_prefix()
    driver = next(iter(build_all().values())).base.parent / "driver.exe"
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        work = Path(tmp)
        folder, package = bench_engine.build_pair(work, args.functions, driver)
        state = work / "state"
        argv = [str(folder / "driver.exe"), f"bench{args.functions}.dll"]
        with WineProcess.start(argv, prefix) as proc:
            spin = proc.request(f"spin {args.threads} case_entry 5")
            if not spin.startswith("spinning"):
                raise RuntimeError(f"driver did not spin: {spin}")
            for _round in range(args.rounds):
                for verb, done in (("apply", "patched"), ("rollback", "rolled_back")):
                    _PAUSES.clear()
                    doc = bench_engine.request(verb, package, state, [proc.linux_pid])
                    _code, result, _elapsed = bench_engine.inproc(verb, doc)
                    entry = result["processes"][0]
                    if entry["result"] != done or entry["attempts"] != 1 or not _PAUSES:
                        continue  # a busy retry is not the pause the engine reports: leave it out
                    rows.append({"verb": verb, **_PAUSES[0]})  # the switch (or restore) pause
    phases = sorted({k for row in rows for k in row if k not in ("verb", "with_stacks")})
    summary: dict[str, Any] = {}
    for verb in ("apply", "rollback"):
        mine = [r for r in rows if r["verb"] == verb]
        if not mine:
            continue
        summary[verb] = {
            "samples": len(mine),
            "pause_us_median": statistics.median(r["pause_us"] for r in mine),
            "phase_us_median": {p: round(statistics.median(r.get(p, 0.0) for r in mine), 1) for p in phases},
        }
    result = {
        "what": (
            "median µs per phase of one pause (timers around the calls; wrapper overhead ~1 µs per call); "
            "stopping_wall: first interrupt -> every thread stopped, held_wall: -> last resumed; "
            f"{', '.join(OUTSIDE_PAUSE)} run outside the pause (listed for scale)"
        ),
        "functions": args.functions,
        "threads": args.threads,
        "rounds": args.rounds,
        "load_average_at_start": load_at_start,
        "load_average_at_end": os.getloadavg(),
        "by_verb": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
