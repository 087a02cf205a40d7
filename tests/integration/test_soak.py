"""A short soak (bench/soak.py): apply/rollback cycles on a busy driver and on the demo service under load.

The full 1,000-cycle run is the benchmark (bench/results/soak.json); this one keeps its promises in CI: zero
crashes, zero wrong results, zero failed requests, every blob freed (the targets' anonymous executable mappings
do not grow) and mappings bounded.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import DRIVER_CASE, SoakConfig, SoakResult, run_soak
from demo.fleet import free_base_port
from tests.fixtures.pe import build_all

pytestmark = [pytest.mark.wine, pytest.mark.integration, pytest.mark.slow]

CYCLES = 50


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> SoakResult:
    try:
        build_all()
    except FileNotFoundError as exc:
        pytest.skip(f"toolchain missing: {exc}")
    if not Path("/usr/lib/wine/wine64").exists():
        pytest.skip("needs wine64")
    config = SoakConfig(
        cycles=CYCLES, sample_every=10, base_port=free_base_port(1), workdir=tmp_path_factory.mktemp("soak"), threads=2
    )
    return run_soak(config)


def test_every_cycle_patches_and_rolls_back_both_busy_targets_without_a_crash(soak: SoakResult) -> None:
    assert soak.cycles_run == CYCLES
    for name, figures in soak.targets.items():
        assert (figures.crashes, figures.apply_failures, figures.rollback_failures) == (0, 0, 0), (name, figures.notes)
        assert figures.applied == figures.rolled_back == CYCLES, name
        assert all(p > 0 for p in figures.pause_us), name
    assert soak.journal_open_records == 0


def test_the_targets_only_ever_answer_with_the_base_or_the_patched_result(soak: SoakResult) -> None:
    driver = soak.targets["driver"]
    assert driver.wrong_results == 0, driver.notes
    pair = build_all()[DRIVER_CASE]
    assert set(driver.results_seen) == {str(pair.base_result), str(pair.patched_result)}, driver.results_seen
    assert driver.calls > 0
    assert soak.targets["service"].wrong_results == 0, soak.targets["service"].notes


def test_the_service_under_load_loses_no_request(soak: SoakResult) -> None:
    assert soak.load is not None and soak.load["sent"] > 0
    assert soak.load["failed"] == 0, soak.load["failures"]
    assert soak.load["answered"] == soak.load["sent"]


def test_memory_of_the_targets_stays_bounded_and_every_blob_is_freed(soak: SoakResult) -> None:
    for name, figures in soak.targets.items():
        samples = figures.memory
        assert len(samples) == CYCLES // 10 + 1, name
        assert {s.exec_anon for s in samples} == {samples[0].exec_anon}, (name, samples)
        assert {s.exec_anon_kib for s in samples} == {samples[0].exec_anon_kib}, (name, samples)
        assert figures.bounded(), (name, samples)
