"""Soak: many apply/rollback cycles on busy Windows processes under Wine; crashes, wrong results, memory.

Two targets, each patched and rolled back once per cycle by the real engine (Wine backend, verbs run in this
process as ``execute`` runs them, so 1,000 cycles do not pay 4,000 interpreter starts):
- ``driver``: the PE fixtures' driver.exe hosting gcc/changed_constant.dll (base 15, patched 35) with ``--threads``
  threads calling the patched function in a tight loop (``spin``); its ``stats`` count every result it saw;
- ``service``: the demo's AppSvc (appsvc.exe + appcore.dll v1, package v1 -> v2) on a private demo fleet
  (``--base-port``, default 0: a free port picked at run time) under demo/loadgen.py at ``--rate`` requests/s;
  after each apply VERSION must say appcore 1.0.1 and after each rollback appcore 1.0.0.

Counted: crashes (the process is gone or its PID names another process), wrong results (a driver result other
than the base or patched value, a driver call error, a VERSION answer other than expected, a wrong answer seen
by the load generator), failed applies/rollbacks, failed requests (load generator), and every ``--sample-every``
cycles the target's memory (VmRSS, count and size of /proc/PID/maps, anonymous executable mappings where blobs
live). Memory is bounded when the last sample has no more mappings and anonymous executable memory than the
first sample after warm-up, plus a small slack (Wine's own heaps may grow by a page or two).

    .venv/bin/python bench/soak.py [--cycles 1000] [--targets driver,service] [--out bench/results/soak.json]

Exit code 0 when nothing crashed, nothing was wrong or failed, and memory stayed bounded; 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
import conftest  # noqa: E402,F401  # pylint: disable=unused-import
from ansible_collections.rebootless.windows.plugins.plugin_utils._builder.build import (  # noqa: E402
    BuildRequest,
    build,
)
from demo.fleet import Fleet, free_base_port  # noqa: E402
from demo.loadgen import LoadGen, Target  # noqa: E402
from demo.main_job import build_demo_package  # noqa: E402
from tests.fixtures.pe import FixturePair, build_all  # noqa: E402
from tests.fixtures.wine import WineProcess, wine_prefix  # noqa: E402
from tests.support.engine_cli import EngineCli, journal_records  # noqa: E402
from tests.support.procmem import MemorySample, alive, sample, start_ticks  # noqa: E402

__all__ = ["SoakConfig", "SoakResult", "TargetFigures", "run_soak"]

DRIVER_CASE = "gcc/changed_constant"
# Mappings the target may gain after warm-up and still count as bounded: a small slack, plus what each new thread
# maps (Wine maps a stack, its guard and a TEB per thread: 2-5 mappings measured) when the service starts a thread
# for a new connection of the load generator. Blobs live in anonymous executable mappings: those must not grow.
MAPPINGS_SLACK = 4
MAPPINGS_PER_THREAD = 5


@dataclass(frozen=True)
class SoakConfig:
    """What to run: ``cycles`` apply+rollback rounds, ``targets`` ("driver", "service"), ``threads`` spinning in the
    driver, ``rate`` requests/s on the service, ``sample_every`` cycles between memory samples, ``base_port`` of
    the private demo fleet (0: a free port from demo.fleet.free_base_port at run time), ``workdir`` for packages,
    state and the fleet (a temporary folder when None)."""

    cycles: int = 1000
    targets: tuple[str, ...] = ("driver", "service")
    threads: int = 4
    rate: float = 50.0
    sample_every: int = 50
    base_port: int = 0
    workdir: Path | None = None


@dataclass
class TargetFigures:
    """One target's counters over the whole soak (see the module docstring for what each one counts)."""

    name: str
    pid: int = 0
    crashes: int = 0
    wrong_results: int = 0
    apply_failures: int = 0
    rollback_failures: int = 0
    applied: int = 0
    rolled_back: int = 0
    calls: int = 0
    results_seen: dict[str, int] = field(default_factory=dict)
    pause_us: list[int] = field(default_factory=list)
    memory: list[MemorySample] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def bounded(self) -> bool:
        """Anonymous executable memory (blobs) never above its first sample, and mappings beyond the first sample
        after warm-up only those of new threads plus a small slack."""
        if len(self.memory) < 2:
            return True
        first, last = self.memory[1] if len(self.memory) > 2 else self.memory[0], self.memory[-1]
        blobs_freed = all(
            m.exec_anon <= self.memory[0].exec_anon and m.exec_anon_kib <= self.memory[0].exec_anon_kib
            for m in self.memory
        )
        allowed = first.mappings + MAPPINGS_SLACK + MAPPINGS_PER_THREAD * max(0, last.threads - first.threads)
        return blobs_freed and last.mappings <= allowed

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        pauses = sorted(self.pause_us)
        data.pop("pause_us")
        data["pause_us"] = {
            "count": len(pauses),
            "median": statistics.median(pauses) if pauses else None,
            "p99": pauses[min(len(pauses) - 1, int(len(pauses) * 0.99))] if pauses else None,
            "max": pauses[-1] if pauses else None,
        }
        data["memory"] = [m.to_json() for m in self.memory]
        if self.memory:
            first, last = self.memory[0], self.memory[-1]
            data["memory_growth"] = {
                "rss_kib": last.rss_kib - first.rss_kib,
                "mappings": last.mappings - first.mappings,
                "mapped_kib": last.mapped_kib - first.mapped_kib,
                "exec_anon": last.exec_anon - first.exec_anon,
                "exec_anon_kib": last.exec_anon_kib - first.exec_anon_kib,
                "threads": last.threads - first.threads,
            }
        data["bounded"] = self.bounded()
        return data


@dataclass
class SoakResult:
    """The soak: figures per target, the load generator's totals (None without the service), wall time."""

    config: dict[str, Any]
    cycles_run: int
    duration_s: float
    targets: dict[str, TargetFigures]
    load: dict[str, Any] | None
    journal_open_records: int
    loadavg: list[tuple[int, float]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        load_failed = self.load["failed"] if self.load else 0
        return load_failed == 0 and all(
            t.crashes == 0
            and t.wrong_results == 0
            and t.apply_failures == 0
            and t.rollback_failures == 0
            and t.bounded()
            for t in self.targets.values()
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "benchmark": "soak",
            "host": {"python": platform.python_version(), "machine": platform.machine(), "cpus": _cpus()},
            "config": self.config,
            "cycles_run": self.cycles_run,
            "duration_s": round(self.duration_s, 1),
            "ok": self.ok,
            "journal_open_records": self.journal_open_records,
            "machine_loadavg_1m": self.loadavg,
            "load": self.load,
            "targets": {name: t.to_json() for name, t in self.targets.items()},
        }


def _cpus() -> int:
    return os.cpu_count() or 0


class _Target:
    """A live target: its engine, how to check it after apply/rollback, its figures."""

    def __init__(self, name: str, engine: EngineCli, pid: int) -> None:
        self.engine = engine
        self.pid = pid
        self.ticks = start_ticks(pid) or 0
        self.figures = TargetFigures(name, pid=pid)
        self.gone = False

    def check_alive(self) -> bool:
        if not self.gone and not alive(self.pid, self.ticks):
            self.gone = True
            self.figures.crashes += 1
            self.figures.notes.append("process gone")
        return not self.gone

    def apply(self) -> None:
        code, result = self.engine.inproc("apply", processes={"pids": [self.pid]})
        procs = result.get("processes") or [{}]
        if code != 0 or procs[0].get("result") != "patched":
            self.figures.apply_failures += 1
            self.figures.notes.append(f"apply: exit {code}: {procs[0].get('reason') or result.get('error')}")
            return
        self.figures.applied += 1
        self.figures.pause_us.append(int(procs[0].get("pause_us") or 0))

    def rollback(self) -> None:
        code, result = self.engine.inproc("rollback")
        procs = result.get("processes") or [{}]
        if code != 0 or procs[0].get("result") != "rolled_back":
            self.figures.rollback_failures += 1
            self.figures.notes.append(f"rollback: exit {code}: {procs[0].get('reason') or result.get('error')}")
            return
        self.figures.rolled_back += 1

    def check_code(self, patched: bool) -> None:
        """Whether the target answers with the code it should run now (subclasses)."""

    def sample(self, cycle: int) -> None:
        if self.check_alive():
            self.figures.memory.append(sample(self.pid, cycle))

    def finish(self) -> None:
        """Last figures before the target stops (subclasses)."""


class _DriverTarget(_Target):
    def __init__(self, engine: EngineCli, proc: WineProcess, pair: FixturePair) -> None:
        super().__init__("driver", engine, proc.linux_pid)
        self.proc, self.pair = proc, pair

    def check_code(self, patched: bool) -> None:
        want = self.pair.patched_result if patched else self.pair.base_result
        got = int(self.proc.request(f"call case_entry {self.pair.x}"))
        if got != want:
            self.figures.wrong_results += 1
            self.figures.notes.append(f"call after {'apply' if patched else 'rollback'}: {got}, expected {want}")

    def finish(self) -> None:
        if not self.check_alive():
            return
        stats = self.proc.stats()
        allowed = {self.pair.base_result, self.pair.patched_result}
        self.figures.calls = stats.calls
        self.figures.results_seen = {str(k): v for k, v in sorted(stats.results.items())}
        wrong = sum(v for k, v in stats.results.items() if k not in allowed) + stats.errors
        if wrong:
            self.figures.wrong_results += wrong
            self.figures.notes.append(f"driver saw {stats.results} with {stats.errors} errors")


class _ServiceTarget(_Target):
    def __init__(self, engine: EngineCli, fleet: Fleet, host: str, pid: int) -> None:
        super().__init__("service", engine, pid)
        self.fleet, self.host = fleet, host

    def check_code(self, patched: bool) -> None:
        want = "appcore 1.0.1" if patched else "appcore 1.0.0"
        try:
            got = self.fleet.request(self.host, "VERSION")
        except OSError as exc:
            got = f"no answer: {exc}"
        if got != want:
            self.figures.wrong_results += 1
            self.figures.notes.append(f"VERSION after {'apply' if patched else 'rollback'}: {got!r}")


def _package_for(pair: FixturePair, folder: Path) -> Path:
    result = build(BuildRequest(str(pair.base), str(pair.patched), "soak", "1.0.0"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"soak-{pair.toolchain}-{pair.case}.hpk"
    path.write_bytes(result.package)
    return path


@contextmanager
def _targets(config: SoakConfig, work: Path) -> Iterator[tuple[list[_Target], LoadGen | None]]:
    """Start the requested targets (and the load generator for the service); stop them all afterwards."""
    with ExitStack() as stack:
        targets: list[_Target] = []
        gen: LoadGen | None = None
        if "driver" in config.targets:
            pair = build_all()[DRIVER_CASE]
            engine = EngineCli(_package_for(pair, work / "packages"), work / "state")
            proc = stack.enter_context(WineProcess.start(pair.argv("base"), wine_prefix()))
            reply = proc.request(f"spin {config.threads} case_entry {pair.x}")
            if not reply.startswith("spinning"):
                raise RuntimeError(f"driver did not spin: {reply!r}")
            targets.append(_DriverTarget(engine, proc, pair))
        if "service" in config.targets:
            fleet = Fleet(work / "fleet")
            stack.callback(fleet.down)
            fleet.up(hosts=1, base_port=config.base_port, mismatch_host=0, timeout=60)
            host = fleet.hosts()[0]
            pid = int(fleet.load_host(host).services["AppSvc"].pid or 0)
            package = build_demo_package(work / "packages").path
            targets.append(_ServiceTarget(EngineCli(package, work / "state"), fleet, host, pid))
            gen = LoadGen([Target(host, "127.0.0.1", config.base_port)], rate=config.rate, timeout=1.0)
        yield targets, gen


def run_soak(config: SoakConfig, progress: bool = False) -> SoakResult:
    """Run the soak described by ``config``; raises FleetError / WineError when a target cannot start."""
    if not config.base_port and "service" in config.targets:
        config = replace(config, base_port=free_base_port(1))  # the result records the port used
    with ExitStack() as stack:
        work = config.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
        targets, gen = stack.enter_context(_targets(config, work))
        if gen is not None:
            gen.start()
        load = None
        started = time.monotonic()
        cycle = 0
        loadavg: list[tuple[int, float]] = []
        try:
            for t in targets:
                t.sample(0)
            for cycle in range(1, config.cycles + 1):
                for t in targets:
                    if t.check_alive():
                        t.apply()
                for t in targets:
                    if t.check_alive():
                        t.check_code(patched=True)
                for t in targets:
                    if t.check_alive():
                        t.rollback()
                        t.check_code(patched=False)
                if cycle % config.sample_every == 0 or cycle == config.cycles:
                    for t in targets:
                        t.sample(cycle)
                    loadavg.append((cycle, os.getloadavg()[0]))  # other work on the machine explains timeouts
                    if progress:
                        print(_progress_line(cycle, targets, gen, started), flush=True)
                if all(t.gone for t in targets):
                    break
            for t in targets:
                t.finish()
        finally:
            if gen is not None:
                lr = gen.stop().to_json()
                load = {k: lr[k] for k in ("duration_s", "rate_per_target", "sent", "answered", "failed")}
                (target,) = lr["targets"].values()
                load.update({k: target[k] for k in ("failures", "p50_ms", "p95_ms", "p99_ms", "max_ms")})
                # When failures happened (seconds since the load started): correlate with other work on the machine.
                load["failed_at_s"] = [p["t"] for p in target["series"] if p["failed"]]
        duration = time.monotonic() - started
        state = next(iter(targets)).engine.state_dir if targets else work / "state"
        return SoakResult(
            config={**asdict(config), "workdir": None, "targets": list(config.targets)},
            cycles_run=cycle,
            duration_s=duration,
            targets={t.figures.name: t.figures for t in targets},
            load=load,
            journal_open_records=len(journal_records(state)),
            loadavg=loadavg,
        )


def _progress_line(cycle: int, targets: list[_Target], gen: LoadGen | None, started: float) -> str:
    parts = [f"cycle {cycle} ({time.monotonic() - started:.0f} s)"]
    for t in targets:
        f, m = t.figures, (t.figures.memory[-1] if t.figures.memory else None)
        mem = f"rss {m.rss_kib} KiB, {m.mappings} maps, {m.exec_anon} anon-x" if m else "gone"
        parts.append(
            f"{f.name}: crashes {f.crashes} wrong {f.wrong_results} fail {f.apply_failures + f.rollback_failures}, {mem}"
        )
    if gen is not None:
        sent, failed = next(iter(gen.live_counts().values()), (0, 0))
        parts.append(f"load: {sent} sent, {failed} failed")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--targets", default="driver,service", help="comma-separated: driver, service")
    parser.add_argument("--threads", type=int, default=4, help="busy threads in the driver (default 4)")
    parser.add_argument("--rate", type=float, default=50.0, help="requests/s on the service (default 50)")
    parser.add_argument("--sample-every", type=int, default=50, help="cycles between memory samples")
    parser.add_argument(
        "--base-port", type=int, default=0, help="port of the private demo host (default 0: a free one)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    args = parser.parse_args(argv)
    targets = tuple(t for t in args.targets.split(",") if t)
    unknown = set(targets) - {"driver", "service"}
    if unknown or not targets:
        parser.error(f"--targets: unknown {sorted(unknown)}; use driver, service or both")
    config = SoakConfig(args.cycles, targets, args.threads, args.rate, args.sample_every, args.base_port)
    # SIGTERM unwinds like Ctrl-C, so the driver and the private demo fleet are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = run_soak(config, progress=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    print(f"{'ok' if result.ok else 'FAILED'}: {result.cycles_run} cycles in {result.duration_s:.0f} s -> {args.out}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
