"""The engine's command line against real Windows programs under Wine, with packages from the real builder.

Each fixture pair (tests/fixtures/pe) is a base and a patched build of one module; driver.exe loads the base build
and answers ``call case_entry <x>``. The engine runs exactly as an action plugin runs it (``python -m hotpatch
<verb> --request FILE``) with the Wine backend.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.host.faults import STEPS
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.host.request import parse_request
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.host.verbs import execute
from ansible_collections.rebootless.windows.plugins.plugin_utils._builder.build import BuildRequest, build
from tests.fixtures.pe import FixturePair
from tests.fixtures.pe.cases import CASES
from tests.fixtures.pe.toolchains import TOOLCHAINS
from tests.fixtures.wine import WineProcess
from tests.support.fault_moments import moment_exists

pytestmark = [pytest.mark.wine, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
ENGINE_ROOT = REPO / "plugins" / "module_utils"
SPIN_THREADS = 4  # busy threads per target; more only starve the engine on a 2-CPU runner
CYCLES = 100


def package_for(pair: FixturePair, folder: Path, package_id: str = "fix") -> Path:
    """Build the pair's hotpatch package with the real builder."""
    result = build(
        BuildRequest(
            str(pair.base),
            str(pair.patched),
            package_id,
            "1.0.0",
            base_map=str(pair.map_file) if pair.map_file else None,
            patched_map=str(pair.patched_map_file) if pair.patched_map_file else None,
        )
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{package_id}-{pair.toolchain}-{pair.case}.hpk"
    path.write_bytes(result.package)
    return path


class Engine:
    """Runs the engine's command line with a fixed package and state dir."""

    def __init__(self, package: Path, state_dir: Path) -> None:
        self.package = package
        self.state_dir = state_dir

    def _request(self, keys: dict[str, Any]) -> dict[str, Any]:
        return {
            "package": str(self.package),
            "state_dir": str(self.state_dir),
            "backend": "wine",
            "allow_unsigned": True,
            **keys,
        }

    def inproc(self, verb: str, **keys: Any) -> tuple[int, dict[str, Any]]:
        """The same verb run inside this test process (saves the interpreter start where many runs are needed)."""
        code, result = execute(parse_request(verb, self._request(keys)))
        return code, result.to_dict()

    def __call__(self, verb: str, fault: str | None = None, **keys: Any) -> tuple[int, dict[str, Any]]:
        request = self._request(keys)
        path = self.state_dir.parent / f"request-{verb}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(request))
        env = {k: v for k, v in os.environ.items() if k != "REBOOTLESS_FAULT_STEP"}
        if fault:
            env["REBOOTLESS_FAULT_STEP"] = fault
        done = subprocess.run(
            [sys.executable, "-m", "hotpatch", verb, "--request", str(path)],
            cwd=ENGINE_ROOT,
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        if done.returncode == 99:
            assert done.stdout == "", "a killed engine prints nothing"
            return 99, {}
        assert done.stdout.count("\n") == 1, done.stdout + done.stderr
        return done.returncode, json.loads(done.stdout)


def _call(proc: WineProcess, pair: FixturePair) -> int:
    return int(proc.request(f"call case_entry {pair.x}"))


def _stats(proc: WineProcess) -> dict[str, Any]:
    return dict(json.loads(proc.request("stats")))


# Every fixture pair the builder turns into a hotpatch package (refused cases go to the cold path instead).
HOTPATCHABLE = [
    f"{tc.name}/{case.name}" for tc in TOOLCHAINS for case in CASES if case.language == tc.language and not case.refused
]


@pytest.mark.parametrize("key", HOTPATCHABLE)
def test_each_case_runs_the_patched_code_after_apply_and_the_base_code_after_rollback(
    pairs: dict[str, FixturePair], prefix: Path, tmp_path: Path, key: str
) -> None:
    pair = pairs[key]
    engine = Engine(package_for(pair, tmp_path), tmp_path / "state")
    with WineProcess.start(pair.argv("base"), prefix) as proc:
        assert _call(proc, pair) == pair.base_result
        code, result = engine("apply", processes={"pids": [proc.linux_pid]})
        assert code == 0, result
        (entry,) = result["processes"]
        assert (entry["result"], entry["code_after"]) == ("patched", "patched")
        assert _call(proc, pair) == pair.patched_result  # for cxx_exception: thrown through patched code, caught
        code, result = engine("verify", processes={"pids": [proc.linux_pid]})
        assert code == 0 and result["processes"][0]["code_after"] == "patched"
        code, result = engine("rollback")
        assert code == 0 and result["processes"][0]["result"] == "rolled_back", result
        assert _call(proc, pair) == pair.base_result
        assert _stats(proc)["errors"] == 0


@pytest.mark.slow
def test_a_busy_process_only_ever_sees_the_old_or_the_new_result(
    pairs: dict[str, FixturePair], prefix: Path, tmp_path: Path
) -> None:
    pair = pairs["gcc/changed_constant"]
    engine = Engine(package_for(pair, tmp_path), tmp_path / "state")
    with WineProcess.start(pair.argv("base"), prefix) as proc:
        assert proc.request(f"spin {SPIN_THREADS} case_entry {pair.x}").startswith("spinning")
        pauses = []
        for _unused in range(CYCLES):
            code, result = engine.inproc("apply", processes={"pids": [proc.linux_pid]})
            assert code == 0 and result["processes"][0]["result"] == "patched", result
            pauses.append(result["processes"][0]["pause_us"])
            assert engine.inproc("rollback")[0] == 0
        stats = _stats(proc)
        assert set(stats["results"]) <= {str(pair.base_result), str(pair.patched_result)}, stats
        assert stats["errors"] == 0 and stats["calls"] > 0
        assert _call(proc, pair) == pair.base_result
        assert all(p > 0 for p in pauses)


def test_applying_twice_changes_nothing_and_new_processes_are_patched_next_time(
    pairs: dict[str, FixturePair], prefix: Path, tmp_path: Path
) -> None:
    pair = pairs["clang/new_helper"]
    engine = Engine(package_for(pair, tmp_path), tmp_path / "state")
    with WineProcess.start(pair.argv("base"), prefix) as first:
        assert engine("apply", processes={"pids": [first.linux_pid]})[0] == 0
        code, result = engine("apply", processes={"pids": [first.linux_pid]})
        assert code == 0 and result["changed"] is False
        assert result["processes"][0]["result"] == "already_patched"
        with WineProcess.start(pair.argv("base"), prefix) as second:
            pids = [first.linux_pid, second.linux_pid]
            code, result = engine("apply", processes={"pids": pids})
            assert code == 0 and result["changed"] is True
            got = {p["pid"]: p["result"] for p in result["processes"]}
            assert got == {first.linux_pid: "already_patched", second.linux_pid: "patched"}
            assert _call(second, pair) == pair.patched_result
            assert engine("rollback")[0] == 0
            assert _call(first, pair) == _call(second, pair) == pair.base_result


def test_a_process_running_another_build_is_left_untouched(
    pairs: dict[str, FixturePair], prefix: Path, tmp_path: Path
) -> None:
    package = package_for(pairs["gcc/changed_constant"], tmp_path)
    other = pairs["clang/changed_constant"]  # same module name, another build
    engine = Engine(package, tmp_path / "state")
    with WineProcess.start(other.argv("base"), prefix) as proc:
        code, result = engine("apply", processes={"pids": [proc.linux_pid]})
        assert code == 1 and result["cold_patch_required"]
        (entry,) = result["processes"]
        assert entry["result"] == "refused" and "not the base image" in entry["reason"]
        assert _call(proc, other) == other.base_result


@pytest.fixture(scope="module")
def spinning(pairs: dict[str, FixturePair], prefix: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One busy driver shared by the fault-step tests (each test leaves it on the base code)."""
    pair = pairs["gcc/new_helper"]
    folder = tmp_path_factory.mktemp("faults")
    package = package_for(pair, folder)
    with WineProcess.start(pair.argv("base"), prefix) as proc:
        assert proc.request(f"spin {SPIN_THREADS} case_entry {pair.x}").startswith("spinning")
        yield pair, package, proc


@pytest.mark.slow
@pytest.mark.parametrize("step", [s for s in STEPS if s.startswith(("apply_", "rollback_", "release_"))])
def test_killing_the_engine_at_each_step_keeps_the_process_running_and_the_next_run_consistent(
    spinning: Any, tmp_path: Path, step: str
) -> None:
    pair, package, proc = spinning
    if not moment_exists(step, package):
        pytest.skip(f"no {step} moment with this package: each function is switched in one write")
    engine = Engine(package, tmp_path / "state")
    pids = {"pids": [proc.linux_pid]}
    if step.startswith("apply_"):
        assert engine("apply", fault=step, processes=pids)[0] == 99
    else:
        assert engine.inproc("apply", processes=pids)[0] == 0
        assert engine("rollback", fault=step)[0] == 99
    assert _call(proc, pair) in (pair.base_result, pair.patched_result)
    code, result = engine("recover")
    assert code == 0, result
    code, result = engine.inproc("verify", processes=pids)
    assert code == 0 and result["processes"][0]["code_after"] in ("base", "patched")
    assert engine.inproc("apply", processes=pids)[0] == 0 and _call(proc, pair) == pair.patched_result
    assert engine.inproc("rollback")[0] == 0 and _call(proc, pair) == pair.base_result
    stats = _stats(proc)
    assert set(stats["results"]) <= {str(pair.base_result), str(pair.patched_result)} and stats["errors"] == 0
    assert not list((tmp_path / "state" / "journal").glob("*.json")), "every journal record is settled"


def test_stage_puts_the_fix_on_disk_for_the_next_start(
    pairs: dict[str, FixturePair], prefix: Path, tmp_path: Path
) -> None:
    pair = pairs["gcc/changed_constant"]
    folder = tmp_path / "app"
    shutil.copytree(pair.base.parent, folder)
    module = folder / pair.module_name
    engine = Engine(package_for(pair, tmp_path), tmp_path / "state")
    argv = [str(folder / "driver.exe"), pair.module_name]
    with WineProcess.start(argv, prefix) as running:
        code, result = engine("stage", processes={"pids": [running.linux_pid]})
        assert code == 0 and result["staged"][0]["path"] == str(module), result
        assert _call(running, pair) == pair.base_result  # the loaded image is untouched
        with WineProcess.start(argv, prefix) as restarted:
            assert _call(restarted, pair) == pair.patched_result
            code, result = engine("apply", processes={"pids": [restarted.linux_pid]})
            assert code == 0 and result["processes"][0]["result"] == "already_patched"
    code, result = engine("unstage", module_path=str(module))
    assert code == 0 and result["changed"] and module.read_bytes() == pair.base.read_bytes()
