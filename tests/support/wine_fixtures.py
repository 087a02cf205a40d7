"""Fixtures shared by the integration tests that run the PE fixtures under Wine (a pytest plugin: see conftest.py).

It also watches for Wine's crash handler: a ``winedbg`` process that appears during the run in one of the tests'
prefixes (under the checkout, under pytest's temporary folder, or unknown because it already exited) fails the
test during which it was first seen (an error at that test's teardown, ~1 ms a test) and, if only found at the
end, the session (exit status 1); the terminal summary lists each one. A test that crashes a Wine program on
purpose says so with ``@pytest.mark.winedbg_expected``: its winedbg is listed, not counted as a failure.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.pe import FixturePair, build_all
from tests.fixtures.wine import wine_prefix
from tests.support.wine_crashes import WinedbgProcess, boot_clock, winedbg_processes

REPO = Path(__file__).resolve().parents[2]
_MARKER = "winedbg_expected"


@pytest.fixture(scope="session")
def prefix() -> Path:
    """The tests' 64-bit Wine prefix (initialised once); skips when wine64 is not installed."""
    try:
        return wine_prefix()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def pairs() -> dict[str, FixturePair]:
    """Every PE fixture pair, built (or taken from the build cache); skips when a toolchain is missing."""
    try:
        return build_all()
    except FileNotFoundError as exc:
        pytest.skip(f"toolchain missing: {exc}")


# -- winedbg watch ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sighting:
    """A winedbg first seen at the end of ``when`` (a test's node id, or "session end"); ``expected`` when that
    test is marked winedbg_expected."""

    when: str
    process: WinedbgProcess
    expected: bool


class _Watch:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.known: set[tuple[int, int]] = set(winedbg_processes())  # those of other runs are not ours
        self.sightings: list[_Sighting] = []

    def new(self) -> list[WinedbgProcess]:
        """winedbg processes not seen before, in a test prefix; each is reported once."""
        fresh = [p for key, p in winedbg_processes().items() if key not in self.known]
        self.known.update(p.key for p in fresh)
        return [p for p in fresh if self._ours(p.prefix)]

    def _ours(self, prefix: str) -> bool:
        if not prefix or Path(prefix).is_relative_to(REPO):
            return True
        factory = getattr(self.config, "_tmp_path_factory", None)  # asked only now: it makes the folder
        return factory is not None and Path(prefix).is_relative_to(factory.getbasetemp())


_WATCH_KEY = pytest.StashKey[_Watch]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{_MARKER}: the test crashes a Wine program on purpose; the winedbg it starts is no failure"
    )
    config.stash[_WATCH_KEY] = _Watch(config)


@pytest.fixture(autouse=True)
def _no_winedbg(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test (at teardown) when a winedbg appeared in a test prefix while it ran."""
    began = boot_clock()
    yield
    watch = request.config.stash[_WATCH_KEY]
    fresh = watch.new()
    if not fresh:
        return
    expected = request.node.get_closest_marker(_MARKER) is not None
    watch.sightings.extend(_Sighting(request.node.nodeid, p, expected) for p in fresh)
    if not expected:
        lines = [
            f"{p.describe()} (started {p.started - began:+.1f} s from this test's start; a negative figure can"
            " mean the previous test's target crashed at exit)"
            for p in fresh
        ]
        pytest.fail("Wine's crash handler started during this test:\n" + "\n".join(lines), pytrace=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    watch = session.config.stash.get(_WATCH_KEY, None)
    if watch is None:
        return
    watch.sightings.extend(_Sighting("session end (module or session teardown)", p, False) for p in watch.new())
    if any(not s.expected for s in watch.sightings) and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
    watch = config.stash.get(_WATCH_KEY, None)
    if watch is None or not watch.sightings:
        return
    terminalreporter.section("winedbg: Wine's crash handler ran during this session", sep="=", red=True, bold=True)
    for sighting in watch.sightings:
        tag = "expected" if sighting.expected else "ERROR"
        terminalreporter.line(f"{tag}: {sighting.process.describe()}; first seen after {sighting.when}")
