"""stage / unstage (cold path on disk): original kept aside for undo, atomic replacement, idempotent, recoverable."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Killed, Runner
from .fake_backend import FakeBackend
from .images import Fixture, spawn

STAGE_STEPS = ["stage_after_intent", "stage_after_rename", "stage_after_write"]
UNSTAGE_STEPS = ["unstage_after_intent", "unstage_after_rename", "unstage_after_restore"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_stage_puts_the_patched_module_in_place_and_keeps_the_original(fx: Fixture, run: Runner) -> None:
    code, result = run("stage", module_path=str(fx.module_path))
    assert code == 0 and result["changed"]
    (entry,) = result["staged"]
    assert fx.module_path.read_bytes() == fx.patched_image
    assert Path(entry["backup"]).read_bytes() == fx.base_image
    assert (entry["sha256_before"], entry["sha256_after"]) == (fx.manifest.base.sha256, fx.manifest.patched.sha256)
    assert ".rebootless-" in entry["backup"]
    assert not list(fx.module_path.parent.glob("*.rebootless-tmp"))


def test_stage_twice_changes_nothing(fx: Fixture, run: Runner) -> None:
    run("stage", module_path=str(fx.module_path))
    code, result = run("stage", module_path=str(fx.module_path))
    assert code == 0 and result["changed"] is False


def test_unstage_restores_the_original_and_is_idempotent(fx: Fixture, run: Runner, state_dir: Path) -> None:
    run("stage", module_path=str(fx.module_path))
    code, result = run("unstage", module_path=str(fx.module_path))
    assert code == 0 and result["changed"]
    assert fx.module_path.read_bytes() == fx.base_image
    assert sorted(p.name for p in fx.module_path.parent.iterdir() if "rebootless" in p.name) == []
    code, result = run("unstage", module_path=str(fx.module_path))
    assert code == 0 and result["changed"] is False
    assert not list((state_dir / "journal").glob("*.json"))


def test_stage_finds_the_module_path_from_running_processes(backend: FakeBackend, fx: Fixture, run: Runner) -> None:
    spawn(backend, fx)
    code, _unused = run("stage")
    assert code == 0 and fx.module_path.read_bytes() == fx.patched_image


def test_stage_without_a_path_or_process_is_a_bad_request(fx: Fixture, run: Runner) -> None:
    code, result = run("stage")
    assert code == 2 and "module_path" in result["error"]["message"]


def test_stage_over_another_build_is_refused_and_changes_nothing(fx: Fixture, run: Runner) -> None:
    fx.module_path.write_bytes(b"MZ other build")
    code, result = run("stage", module_path=str(fx.module_path))
    assert code == 5 and result["error"]["kind"] == "image"
    assert fx.module_path.read_bytes() == b"MZ other build"
    assert sorted(p.name for p in fx.module_path.parent.iterdir() if "rebootless" in p.name) == []


def test_stage_may_replace_another_build_and_unstage_puts_that_very_file_back(fx: Fixture, run: Runner) -> None:
    other = bytearray(fx.base_image)
    other[-1] ^= 0xFF  # same machine and headers, another build's bytes
    fx.module_path.write_bytes(bytes(other))
    code, result = run("stage", module_path=str(fx.module_path), replace_other_build=True)
    assert code == 0 and result["changed"]
    assert fx.module_path.read_bytes() == fx.patched_image
    assert result["staged"][0]["sha256_before"] == hashlib.sha256(bytes(other)).hexdigest()
    code, result = run("unstage", module_path=str(fx.module_path))
    assert code == 0 and result["changed"]
    assert fx.module_path.read_bytes() == bytes(other)


def test_replacing_another_build_still_refuses_a_file_that_is_no_pe_image(fx: Fixture, run: Runner) -> None:
    fx.module_path.write_bytes(b"MZ other build")
    code, result = run("stage", module_path=str(fx.module_path), replace_other_build=True)
    assert code == 5 and "PE" in result["error"]["message"]
    assert fx.module_path.read_bytes() == b"MZ other build"
    assert sorted(p.name for p in fx.module_path.parent.iterdir() if "rebootless" in p.name) == []


def test_processes_keep_running_the_base_image_after_stage(backend: FakeBackend, fx: Fixture, run: Runner) -> None:
    proc = spawn(backend, fx)
    run("stage", module_path=str(fx.module_path))
    code, _unused = run("apply")  # the file on disk is the patched image now; the loaded one is still the base
    assert code == 0 and set(proc.code().values()) == {"patched"}


@pytest.mark.parametrize("step", STAGE_STEPS)
def test_killed_stage_leaves_a_loadable_module_and_recovers(
    fx: Fixture, run: Runner, kill_at: Callable[[str | None], None], step: str
) -> None:
    kill_at(step)
    with pytest.raises(Killed):
        run("stage", module_path=str(fx.module_path))
    kill_at(None)
    code, result = run("recover")
    assert code == 0 and result["recovered"]
    assert _sha(fx.module_path) in (fx.manifest.base.sha256, fx.manifest.patched.sha256)
    assert run("stage", module_path=str(fx.module_path))[0] == 0
    assert fx.module_path.read_bytes() == fx.patched_image
    assert run("unstage", module_path=str(fx.module_path))[0] == 0
    assert fx.module_path.read_bytes() == fx.base_image


@pytest.mark.parametrize("step", UNSTAGE_STEPS)
def test_killed_unstage_is_finished_by_the_next_run(
    fx: Fixture, run: Runner, state_dir: Path, kill_at: Callable[[str | None], None], step: str
) -> None:
    run("stage", module_path=str(fx.module_path))
    kill_at(step)
    with pytest.raises(Killed):
        run("unstage", module_path=str(fx.module_path))
    kill_at(None)
    code, _unused = run("recover")
    assert code == 0 and fx.module_path.read_bytes() == fx.base_image
    assert not list((state_dir / "journal").glob("*.json"))
