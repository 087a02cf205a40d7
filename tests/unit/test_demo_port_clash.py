"""`make demo` when its ports are taken: the error says what to type, and a failed up never pins the old port.

Real components up to the port check (the mingw-w64 build, host provisioning, loopback listeners); no Wine
program starts, because the clash is found before a service is launched.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo import demo as demo_cli
from demo.fleet import Fleet, PortTakenError, free_base_port

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def taken_port() -> Iterator[int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", free_base_port(1)))
    sock.listen()
    with sock:
        yield sock.getsockname()[1]


def _listen_on_free_port() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", free_base_port(1)))
    sock.listen()
    return sock


def test_demo_on_a_taken_port_says_exactly_what_to_type(
    tmp_path: Path, taken_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--root", str(tmp_path / "fleet"), "--hosts", "1", "--base-port", str(taken_port), "--no-main-job"]
    assert demo_cli.main(argv) == 1
    err = capsys.readouterr().err
    assert f"port {taken_port} is taken" in err
    assert 'make demo DEMO_ARGS="--base-port 0"' in err
    assert "demo/fleet.py down" in err


def test_a_failed_up_does_not_pin_the_port_for_the_next_up(tmp_path: Path, taken_port: int) -> None:
    fleet = Fleet(tmp_path / "fleet")
    with pytest.raises(PortTakenError) as first:
        fleet.up(hosts=1, base_port=taken_port)
    assert first.value.port == taken_port
    assert not (fleet.root / "fleet.json").exists()
    # The retry asks for other ports: the leftover host record must follow, not fail on the old port again.
    with _listen_on_free_port() as other:
        other_port = other.getsockname()[1]
        with pytest.raises(PortTakenError) as second:
            fleet.up(hosts=1, base_port=other_port)
    assert second.value.port == other_port
    record = json.loads((fleet.host_dir("demo-host-1") / "host.json").read_text())
    services = json.loads((fleet.host_dir("demo-host-1") / "services.json").read_text())
    assert record["port"] == other_port
    assert services["AppSvc"]["port"] == other_port and services["AppSvc"]["args"] == [str(other_port)]


def test_demo_reads_the_base_port_from_the_environment_like_the_fleet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REBOOTLESS_DEMO_BASE_PORT", "24000")
    assert demo_cli.default_base_port() == 24000
    monkeypatch.delenv("REBOOTLESS_DEMO_BASE_PORT")
    assert demo_cli.default_base_port() == 18080


def test_make_demo_passes_demo_args_to_the_demo() -> None:
    out = subprocess.run(
        ["make", "-n", "demo", "DEMO_ARGS=--base-port 0 --hosts 2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "demo/demo.py --base-port 0 --hosts 2" in out
