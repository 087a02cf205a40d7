"""The fixtures are real programs: every base/patched pair runs under Wine through driver.exe (or as its own
EXE) and gives its documented case_entry result, and the driver's protocol does what the engine tests need."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.pe import CASES, TOOLCHAINS, FixturePair, build_all, driver_exe
from tests.fixtures.wine import WineError, WineProcess

KEYS = [f"{t.name}/{c.name}" for t in TOOLCHAINS for c in CASES if c.language == t.language]


@pytest.fixture(scope="session")
def pairs() -> dict[str, FixturePair]:
    return build_all()


@pytest.mark.parametrize("which", ["base", "patched"])
@pytest.mark.parametrize("key", KEYS)
def test_case_entry_gives_the_documented_result(
    pairs: dict[str, FixturePair], prefix: Path, key: str, which: str
) -> None:
    pair = pairs[key]
    with WineProcess.start(pair.argv(which), prefix) as proc:
        assert proc.ready is not None and proc.ready.module_name == pair.module_name
        assert proc.request(f"call case_entry {pair.x}") == str(pair.expected(which))
    assert proc.popen.returncode == 0


def test_the_driver_is_found_by_its_comm_and_maps_the_dll_at_the_reported_base(
    pairs: dict[str, FixturePair], prefix: Path
) -> None:
    pair = pairs["gcc/changed_constant"]
    with WineProcess.start(pair.argv("base"), prefix) as proc:
        assert proc.ready is not None
        assert Path(f"/proc/{proc.linux_pid}/comm").read_text().strip() == "driver.exe"
        header = f"{proc.ready.module_base:x}-"
        maps = Path(f"/proc/{proc.linux_pid}/maps").read_text().splitlines()
        mapped = [line for line in maps if line.startswith(header) and line.endswith(str(pair.base))]
        assert mapped, f"no mapping of {pair.base} at {header}"


def test_a_staged_copy_runs_from_its_own_folder(pairs: dict[str, FixturePair], prefix: Path, tmp_path: Path) -> None:
    pair = pairs["clang/new_helper"]
    argv = pair.stage("patched", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "driver.exe",
        "new_helper.dll",
        "new_helper.map",
        "new_helper.pdb",
    ]
    with WineProcess.start(argv, prefix) as proc:
        assert proc.request(f"call case_entry {pair.x}") == str(pair.patched_result)
        maps = Path(f"/proc/{proc.linux_pid}/maps").read_text()
        assert str(tmp_path / "new_helper.dll") in maps


def test_selfloop_is_its_own_host(pairs: dict[str, FixturePair], prefix: Path) -> None:
    pair = pairs["gcc/selfloop"]
    with WineProcess.start(pair.argv("patched"), prefix) as proc:
        assert Path(f"/proc/{proc.linux_pid}/comm").read_text().strip() == "selfloop.exe"
        assert proc.request("call loop_step 1") == "22"


def test_spinning_threads_tally_only_the_builds_result(pairs: dict[str, FixturePair], prefix: Path) -> None:
    pair = pairs["gxx/cxx_exception"]
    with WineProcess.start(pair.argv("patched"), prefix) as proc:
        assert proc.request(f"spin 3 case_entry {pair.x}") == "spinning 3"
        first = proc.stats()
        assert set(first.results) == {pair.patched_result}
        assert first.errors == 0 and first.threads == 3 and first.calls >= 3
        assert proc.request("reset") == "reset"
        assert proc.request("stop") == "stopped 3"
        assert proc.stats().threads == 0


def test_a_fault_in_a_call_is_counted_and_the_driver_keeps_serving(pairs: dict[str, FixturePair], prefix: Path) -> None:
    pair = pairs["gcc/changed_constant"]
    with WineProcess.start(pair.argv("base"), prefix) as proc:
        assert proc.request("call __fault 1") == "error exception 0xc0000005"
        assert proc.request("spin 1 __fault 1") == "spinning 1"
        assert proc.request("spin 1 case_entry 5") == "spinning 2"
        counted = proc.stats()
        assert counted.errors >= 1 and counted.last_error == 0xC0000005
        assert set(counted.results) == {15}
        assert proc.request(f"call case_entry {pair.x}") == "15"


def test_patched_code_writes_the_modules_own_globals(pairs: dict[str, FixturePair], prefix: Path) -> None:
    pair = pairs["clang/global_access"]
    for which, hits in (("base", "2"), ("patched", "2000")):
        with WineProcess.start(pair.argv(which), prefix) as proc:
            proc.request("call case_entry 1")
            proc.request("call case_entry 1")
            assert proc.request("call global_hits 0") == hits


def test_protocol_errors_are_replies_not_exits(pairs: dict[str, FixturePair], prefix: Path) -> None:
    pair = pairs["gcc/changed_constant"]
    with WineProcess.start(pair.argv("base"), prefix) as proc:
        assert proc.request("call nothing_here 1") == "error no such function: nothing_here"
        assert proc.request("call case_entry x").startswith("error not an integer")
        assert proc.request("dance").startswith("error unknown command")
        assert proc.request("call case_entry -3") == "-9"


def test_a_missing_dll_is_reported_and_ends_the_driver(prefix: Path) -> None:
    with pytest.raises(WineError, match="cannot load"):
        WineProcess.start([str(driver_exe()), "no_such_case.dll"], prefix, timeout=60)
