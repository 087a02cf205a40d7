"""Load generator for the demo fleet: fixed-rate request traffic, failures and latency per target.

Open loop: each target gets ``rate`` requests per second on a fixed schedule whatever the answers, so an
outage shows as failures and a pause as latency (not as a slower sender). Requests cycle through PING, VERSION,
GET 1 and reuse idle connections (a fresh one when none is idle). A request fails on connection refused/reset,
a closed connection, no answer within ``timeout`` seconds, or a wrong answer.

Importable (``LoadGen(targets).start()`` ... ``.stop() -> LoadResult``; used while a playbook runs) and a CLI::

    loadgen.py (--target [NAME=]HOST:PORT ... | --inventory demo/run/inventory.yml) [--rate 50]
               [--duration 10 | --duration 0 (until SIGTERM/SIGINT)] [--timeout 1] [--out result.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_MIX", "LoadGen", "LoadResult", "SeriesPoint", "Target", "TargetResult", "percentile"]

# (request line, expected answer); an expected answer ending in "*" matches by prefix (VERSION changes
# when appcore is patched).
DEFAULT_MIX: tuple[tuple[str, str], ...] = (("PING", "PONG"), ("VERSION", "appcore *"), ("GET 1", "banana"))


@dataclass(frozen=True)
class Target:
    """A service to load: name used in results, loopback address."""

    name: str
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class SeriesPoint:
    """One second of one target, by send time: t = whole seconds since start; latencies in milliseconds of the
    answered requests (None when none answered)."""

    t: int
    sent: int = 0
    failed: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None


@dataclass
class TargetResult:
    """Totals of one target; failures by kind (refused, reset, closed, timeout, wrong_answer, error)."""

    name: str
    address: str
    sent: int = 0
    answered: int = 0
    failed: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    series: list[SeriesPoint] = field(default_factory=list)


@dataclass
class LoadResult:
    """The run: rate per target (requests/s), achieved_rps = sent / duration over all targets."""

    started_at: float
    duration_s: float
    rate_per_target: float
    timeout_s: float
    sent: int
    answered: int
    failed: int
    achieved_rps: float
    targets: dict[str, TargetResult]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile (pct in 0..100) of values, None for an empty list."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[rank - 1]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _matches(answer: str, expected: str) -> bool:
    return answer.startswith(expected[:-1]) if expected.endswith("*") else answer == expected


class _TargetState:
    def __init__(self, target: Target) -> None:
        self.target = target
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.latencies: list[float] = []
        self.failures: dict[str, int] = {}
        self.sent = 0
        self.buckets: dict[int, tuple[list[int], list[float]]] = {}  # t -> ([sent, failed], latencies)

    def bucket(self, t: int) -> tuple[list[int], list[float]]:
        return self.buckets.setdefault(t, ([0, 0], []))


class LoadGen:
    """Fixed-rate load on targets: rate requests/s each, timeout seconds per request, mix of (line, expected).

    Either ``run(duration)`` (blocking) or ``start()`` then ``stop()`` (runs in a background thread with its
    own event loop). Raises ValueError for an empty target list or a non-positive rate.
    """

    def __init__(
        self,
        targets: list[Target],
        rate: float = 50.0,
        timeout: float = 1.0,
        mix: tuple[tuple[str, str], ...] = DEFAULT_MIX,
    ) -> None:
        if not targets:
            raise ValueError("no targets: give --target HOST:PORT or an inventory with demo_service_port")
        if rate <= 0:
            raise ValueError("rate must be > 0 requests per second")
        self.targets = targets
        self.rate = rate
        self.timeout = timeout
        self.mix = mix
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._result: LoadResult | None = None
        self._error: BaseException | None = None
        self._states: list[_TargetState] = []

    # -- one request ---------------------------------------------------------------------------------------------
    async def _one(self, st: _TargetState, line: str, expected: str, t0: float) -> None:
        sent_at = time.monotonic()
        counters, lats = st.bucket(int(sent_at - t0))
        counters[0] += 1
        st.sent += 1
        conn = None
        kind = None
        try:
            async with asyncio.timeout(self.timeout):
                conn = st.idle.pop() if st.idle else await asyncio.open_connection(st.target.host, st.target.port)
                reader, writer = conn
                writer.write(line.encode() + b"\n")
                await writer.drain()
                raw = await reader.readline()
            if not raw.endswith(b"\n"):
                kind = "closed"
            elif not _matches(raw.decode(errors="replace").rstrip("\r\n"), expected):
                kind = "wrong_answer"
        except TimeoutError:
            kind = "timeout"
        except ConnectionRefusedError:
            kind = "refused"
        except (ConnectionResetError, BrokenPipeError):
            kind = "reset"
        except OSError:
            kind = "error"
        if kind is None and conn is not None:
            latency = (time.monotonic() - sent_at) * 1000.0
            st.latencies.append(latency)
            lats.append(latency)
            st.idle.append(conn)
            return
        counters[1] += 1
        st.failures[kind or "error"] = st.failures.get(kind or "error", 0) + 1
        if conn is not None:
            conn[1].close()

    async def _drive(self, st: _TargetState, t0: float, stop: asyncio.Event, tasks: set[asyncio.Task[None]]) -> None:
        interval = 1.0 / self.rate
        k = 0
        while not stop.is_set():
            line, expected = self.mix[k % len(self.mix)]
            task = asyncio.create_task(self._one(st, line, expected, t0))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            k += 1
            delay = t0 + k * interval - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stop.wait()

    async def run_async(self, duration: float | None = None, stop: asyncio.Event | None = None) -> LoadResult:
        """Send load until duration seconds pass (None: no limit) or stop is set; return the result."""
        stop = stop or asyncio.Event()
        states = [_TargetState(t) for t in self.targets]
        self._states = states
        tasks: set[asyncio.Task[None]] = set()
        started_at, t0 = time.time(), time.monotonic()
        drivers = [asyncio.create_task(self._drive(st, t0, stop, tasks)) for st in states]
        if duration is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(duration):
                    await stop.wait()
            stop.set()
        await asyncio.gather(*drivers)
        duration_s = time.monotonic() - t0
        if tasks:  # every request ends within its timeout
            await asyncio.wait(set(tasks), timeout=self.timeout + 1.0)
        for st in states:
            for _reader, writer in st.idle:
                writer.close()
        return self._result_of(states, started_at, duration_s)

    def _result_of(self, states: list[_TargetState], started_at: float, duration_s: float) -> LoadResult:
        targets: dict[str, TargetResult] = {}
        for st in states:
            failed = sum(st.failures.values())
            series = [
                SeriesPoint(t, c[0], c[1], _ms(percentile(lats, 50)), _ms(percentile(lats, 99)))
                for t, (c, lats) in sorted(st.buckets.items())
            ]
            targets[st.target.name] = TargetResult(
                name=st.target.name,
                address=st.target.address,
                sent=st.sent,
                answered=len(st.latencies),
                failed=failed,
                failures=dict(sorted(st.failures.items())),
                p50_ms=_ms(percentile(st.latencies, 50)),
                p95_ms=_ms(percentile(st.latencies, 95)),
                p99_ms=_ms(percentile(st.latencies, 99)),
                max_ms=_ms(max(st.latencies)) if st.latencies else None,
                series=series,
            )
        sent = sum(t.sent for t in targets.values())
        return LoadResult(
            started_at=started_at,
            duration_s=round(duration_s, 3),
            rate_per_target=self.rate,
            timeout_s=self.timeout,
            sent=sent,
            answered=sum(t.answered for t in targets.values()),
            failed=sum(t.failed for t in targets.values()),
            achieved_rps=round(sent / duration_s, 1) if duration_s > 0 else 0.0,
            targets=targets,
        )

    def live_counts(self) -> dict[str, tuple[int, int]]:
        """While running: target name -> (sent, failed) so far (read from another thread; may lag by a request)."""
        return {st.target.name: (st.sent, sum(st.failures.values())) for st in list(self._states)}

    # -- blocking and background use -----------------------------------------------------------------------------
    def run(self, duration: float | None) -> LoadResult:
        """Blocking run for duration seconds (None: until SIGTERM/SIGINT); installs signal handlers, so call
        it from the main thread."""

        async def main() -> LoadResult:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            return await self.run_async(duration, stop)

        return asyncio.run(main())

    def start(self) -> LoadGen:
        """Start sending in a background thread; returns self. Raises RuntimeError when already started."""
        if self._thread is not None:
            raise RuntimeError("load generator already started")

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._ready.set()
            self._result = await self.run_async(None, self._stop)

        def target() -> None:
            try:
                asyncio.run(main())
            except BaseException as exc:
                self._error = exc
                self._ready.set()

        self._thread = threading.Thread(target=target, name="loadgen", daemon=True)
        self._thread.start()
        self._ready.wait(10.0)
        return self

    def stop(self, timeout: float = 30.0) -> LoadResult:
        """Stop sending, wait (bounded) for requests in flight, and return the result.
        Raises RuntimeError when not started or when the generator failed."""
        if self._thread is None:
            raise RuntimeError("load generator not started")
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"load generator did not stop within {timeout:.0f} s")
        if self._error is not None or self._result is None:
            raise RuntimeError(f"load generator failed: {self._error!r}")
        return self._result


def targets_from_inventory(path: Path) -> list[Target]:
    """Targets of an inventory written by demo/fleet.py up: each host of any group with demo_service_port."""
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    found: dict[str, Target] = {}

    def walk(group: dict[str, Any]) -> None:
        for name, hvars in (group.get("hosts") or {}).items():
            if hvars and "demo_service_port" in hvars:
                found[name] = Target(name, "127.0.0.1", int(hvars["demo_service_port"]))
        for child in (group.get("children") or {}).values():
            walk(child or {})

    for group in data.values():
        walk(group or {})
    return list(found.values())


def _parse_target(text: str) -> Target:
    name, _eq, address = text.rpartition("=")
    host, _colon, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected [NAME=]HOST:PORT")
    return Target(name or address, host, int(port))


def summary_lines(result: LoadResult) -> list[str]:
    """Human summary: one line per target and a total."""

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    lines = [f"{'target':<14} {'address':<16} {'sent':>6} {'failed':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"]
    for t in result.targets.values():
        lines.append(
            f"{t.name:<14} {t.address:<16} {t.sent:>6} {t.failed:>6} {ms(t.p50_ms):>8} {ms(t.p95_ms):>8} {ms(t.p99_ms):>8}"
        )
    lines.append(
        f"total: {result.sent} sent, {result.failed} failed in {result.duration_s:.1f} s ({result.achieved_rps} req/s)"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fixed-rate load on AppSvc services; writes a JSON result.")
    parser.add_argument("--target", type=_parse_target, action="append", default=[], help="[NAME=]HOST:PORT")
    parser.add_argument("--inventory", type=Path, help="inventory written by demo/fleet.py up")
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second per target (default 50)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds; 0 = until SIGTERM/SIGINT")
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds per request (default 1)")
    parser.add_argument("--out", type=Path, help="write the JSON result here")
    args = parser.parse_args(argv)
    targets = list(args.target)
    if args.inventory:
        targets += targets_from_inventory(args.inventory)
    try:
        gen = LoadGen(targets, args.rate, args.timeout)
    except ValueError as exc:
        parser.error(str(exc))
    result = gen.run(args.duration or None)
    if args.out:
        result.write(args.out)
    print("\n".join(summary_lines(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
