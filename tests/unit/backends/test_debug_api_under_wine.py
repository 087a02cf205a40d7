"""The operating-system behaviour the Windows backend's quiesce relies on, checked for real under Wine.

No Windows runs here and the Windows backend itself needs a Windows Python, so a C program
(``debug_api/freezer.c``, built with mingw-w64) performs the backend's freeze against a busy program
(``debug_api/busy_target.c``): DbgUiConnectToDbg, DebugSetProcessKillOnExit(FALSE), DebugActiveProcess, the attach
events answered, the creation of the thread the system injects held. What it shows, on Wine 8: holding that event
freezes every thread; DebugActiveProcessStop lets them run, five times in a row (the engine's retries); the debugger
ending, or being SIGKILLed, while it holds the event leaves the target running; without detach-on-exit the same
death kills the target (the control). The strict fake in fake_kernel32.py models these rules.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.wine import WINE64, ensure_wineserver, wine_env, wine_prefix
from tests.support.wine_crashes import exit_problem

pytestmark = pytest.mark.wine

SOURCES = Path(__file__).resolve().parent / "debug_api"
GCC = "x86_64-w64-mingw32-gcc"
TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which(GCC) is None or not WINE64.exists():
        pytest.skip(f"needs {GCC} (gcc-mingw-w64-x86-64) and {WINE64} (wine64)")
    out = tmp_path_factory.mktemp("debug_api")
    for name, libs in (("busy_target", []), ("freezer", ["-lntdll"])):
        subprocess.run(
            [GCC, "-O1", "-Wall", "-Werror", "-o", str(out / f"{name}.exe"), str(SOURCES / f"{name}.c"), *libs],
            check=True,
            timeout=120,
        )
    return out


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    prefix = wine_prefix()
    ensure_wineserver(prefix)
    return wine_env(prefix)


class Target:
    """The busy program: two threads counting; each line sent gets the sum of the counters back."""

    def __init__(self, programs: Path, env: dict[str, str]) -> None:
        # A file, not a pipe (nobody reads it until close), open for the target's whole life.
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self.expect_death = False  # set by a test whose point is that the target dies
        self.proc = subprocess.Popen(
            [str(WINE64), str(programs / "busy_target.exe")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=env,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        _ready, self.windows_pid, self.counters = self.stdout.readline().split()

    def count(self) -> int:
        self.stdin.write("count\n")
        self.stdin.flush()
        return int(self.stdout.readline())

    def keeps_counting(self) -> bool:
        """True once the counters move on (polled: the threads may need a scheduling round after a release)."""
        first = self.count()
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            if self.count() > first:
                return True
        return False

    def close(self) -> str | None:
        """Ask the program to quit (kill it if it will not); returns why it did not end cleanly, or None."""
        if self.proc.poll() is None:
            try:
                self.stdin.write("quit\n")
                self.stdin.flush()
                self.proc.wait(timeout=TIMEOUT_S)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.stderr.seek(0)
        stderr = self.stderr.read().decode(errors="replace")
        self.stderr.close()
        if self.expect_death:
            return None
        # A kill here means it hung after "quit": not clean either.
        return exit_problem("busy_target.exe", self.proc.returncode, 0, killed=False, stderr=stderr)


@pytest.fixture
def target(programs: Path, env: dict[str, str]) -> Iterator[Target]:
    busy = Target(programs, env)
    try:
        yield busy
    finally:
        problem = busy.close()
    assert problem is None, problem  # a target that crashed or hung while frozen and released fails its test


def _freezer(programs: Path, env: dict[str, str], target: Target, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(WINE64), str(programs / "freezer.exe"), target.windows_pid, f"0x{target.counters}", mode],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_holding_the_injected_threads_creation_freezes_every_thread_and_each_detach_lets_them_run(
    programs: Path, env: dict[str, str], target: Target
) -> None:
    freezer = _freezer(programs, env, target, "cycles")
    out, _unused = freezer.communicate(timeout=TIMEOUT_S)
    assert freezer.returncode == 0, out
    assert out.count("held create\nfrozen 1\n") == 5 and "frozen 0" not in out, out
    assert out.count("pause_us ") == 5
    assert target.keeps_counting()


@pytest.mark.parametrize("death", ["exit", "sigkill"])
def test_a_debugger_that_dies_holding_the_injected_thread_leaves_the_target_running(
    programs: Path, env: dict[str, str], target: Target, death: str
) -> None:
    freezer = _freezer(programs, env, target, "die" if death == "exit" else "hang")
    assert freezer.stdout is not None
    assert [freezer.stdout.readline() for _line in range(3)] == ["held create\n", "frozen 1\n", "holding\n"]
    if death == "sigkill":
        os.kill(freezer.pid, signal.SIGKILL)  # the Wine process is the Linux process Popen started
    freezer.wait(timeout=TIMEOUT_S)
    freezer.stdout.close()
    assert target.keeps_counting()


def test_without_detach_on_exit_the_same_death_kills_the_target(
    programs: Path, env: dict[str, str], target: Target
) -> None:
    target.expect_death = True
    freezer = _freezer(programs, env, target, "die-kill")
    out, _unused = freezer.communicate(timeout=TIMEOUT_S)
    assert out == "held create\nfrozen 1\nholding\n"
    assert target.proc.wait(timeout=TIMEOUT_S) != 0
