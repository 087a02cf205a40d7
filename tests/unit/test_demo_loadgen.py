"""The load generator against a real loopback TCP server speaking AppSvc's line protocol (no Wine needed)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from demo.loadgen import LoadGen, Target, percentile, targets_from_inventory


class LineServer:
    """AppSvc's answers (PING, VERSION, GET 1) on 127.0.0.1 from a thread; `wrong` makes GET 1 answer badly."""

    def __init__(self, wrong: bool = False) -> None:
        self.wrong = wrong
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answers = {"PING": "PONG", "VERSION": "appcore 1.0.0", "GET 1": "cherry" if self.wrong else "banana"}
        while line := await reader.readline():
            writer.write(answers.get(line.decode().strip(), "ERR unknown request").encode() + b"\n")
            await writer.drain()
        writer.close()

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()

    def __enter__(self) -> LineServer:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture()
def closed_port() -> Iterator[int]:
    """A loopback port nobody listens on (bound without listen, so nothing else takes it meanwhile)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_every_request_answered_right_counts_no_failure() -> None:
    with LineServer() as server:
        result = LoadGen([Target("ok", "127.0.0.1", server.port)], rate=100.0).run(1.0)
    t = result.targets["ok"]
    assert t.sent >= 90 and t.failed == 0 and t.answered == t.sent
    assert t.p50_ms is not None and t.p95_ms is not None and t.p99_ms is not None
    assert t.p50_ms <= t.p95_ms <= t.p99_ms
    assert sum(p.sent for p in t.series) == t.sent


def test_wrong_answers_and_refused_connections_count_as_failures(closed_port: int) -> None:
    with LineServer(wrong=True) as server:
        gen = LoadGen([Target("wrong", "127.0.0.1", server.port), Target("dead", "127.0.0.1", closed_port)], rate=60.0)
        result = gen.run(1.0)
    wrong, dead = result.targets["wrong"], result.targets["dead"]
    assert set(wrong.failures) == {"wrong_answer"}
    assert wrong.failed == pytest.approx(wrong.sent / 3, abs=1)  # GET 1 is one request in three
    assert dead.answered == 0 and dead.failed == dead.sent and set(dead.failures) == {"refused"}
    assert result.failed == wrong.failed + dead.failed


def test_start_and_stop_from_another_thread_returns_the_result(tmp_path: Path) -> None:
    with LineServer() as server:
        gen = LoadGen([Target("bg", "127.0.0.1", server.port)], rate=50.0).start()
        deadline = time.monotonic() + 10.0
        while gen.live_counts().get("bg", (0, 0))[0] < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        result = gen.stop()
    assert result.targets["bg"].sent >= 20 and result.failed == 0
    out = tmp_path / "r.json"
    result.write(out)
    assert '"p99_ms"' in out.read_text()


def test_targets_come_from_a_fleet_inventory(tmp_path: Path) -> None:
    inv = tmp_path / "inventory.yml"
    hosts = {"demo-host-1": {"demo_service_port": 18080}, "demo-host-2": {"demo_service_port": 18081}, "x": {}}
    inv.write_text(yaml.safe_dump({"all": {"children": {"demo_fleet": {"hosts": hosts}}}}))
    assert targets_from_inventory(inv) == [
        Target("demo-host-1", "127.0.0.1", 18080),
        Target("demo-host-2", "127.0.0.1", 18081),
    ]
