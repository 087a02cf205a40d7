"""A demo fleet for one test module: free loopback ports, always brought down (see demo/fleet.py)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from demo.fleet import Fleet, free_base_port

__all__ = ["have_wine", "running_fleet"]


def have_wine() -> bool:
    """wine64 and the mingw-w64 C compiler are installed (``make deps``): a fleet can be built and run."""
    return Path("/usr/lib/wine/wine64").exists() and shutil.which("x86_64-w64-mingw32-gcc") is not None


@contextmanager
def running_fleet(folder: Path, hosts: int, mismatch_host: int = 3) -> Iterator[Fleet]:
    """``hosts`` simulated hosts under ``folder`` on consecutive free ports (host ``mismatch_host`` runs the
    other appcore build, as in Fleet.up); the fleet is brought down on the way out, even after a failure."""
    fleet = Fleet(folder)
    try:
        fleet.up(hosts=hosts, base_port=free_base_port(hosts), mismatch_host=mismatch_host, timeout=60)
        yield fleet
    finally:
        fleet.down()
