"""Free loopback ports for a fleet (demo/fleet.py free_base_port): tests and a second fleet never collide."""

from __future__ import annotations

import socket

import pytest

from demo.fleet import FleetError, free_base_port


def _listen() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", free_base_port(1)))
    sock.listen()
    return sock


def test_the_block_is_consecutive_and_every_port_in_it_can_be_bound() -> None:
    base = free_base_port(4)
    assert base >= 20000 and base + 4 <= 32000
    held = []
    try:
        for port in range(base, base + 4):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(sock)
            sock.bind(("127.0.0.1", port))
    finally:
        for sock in held:
            sock.close()


def test_a_port_something_listens_on_is_never_inside_the_block() -> None:
    with _listen() as taken:
        port = taken.getsockname()[1]
        # The only window around the taken port: every block of 3 in it must avoid that port.
        for _unused in range(20):
            base = free_base_port(3, low=port - 3, high=port + 4)
            assert port not in range(base, base + 3)


def test_no_free_block_says_what_to_do() -> None:
    with _listen() as taken:
        port = taken.getsockname()[1]
        with pytest.raises(FleetError, match="--base-port"):
            free_base_port(2, low=port, high=port + 2)
