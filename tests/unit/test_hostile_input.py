"""Hostile packages and images: every input is either accepted whole or refused with the engine's own error."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch import package as pkg
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.errors import PackageError
from ansible_collections.rebootless.windows.tests.fuzz.targets import parse_image, read_package, seed_package

ROOT = Path(__file__).resolve().parents[2]
SEED = seed_package()
WINE_DLLS = Path("/usr/lib/x86_64-linux-gnu/wine/x86_64-windows")
FUZZ_RUNS = int(os.environ.get("REBOOTLESS_FUZZ_RUNS", "3000"))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**65), 2**65) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_are_refused_as_a_package_error(data: bytes) -> None:
    read_package(data)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(SEED) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_a_valid_package_with_flipped_bytes_is_accepted_whole_or_refused(flips: list[tuple[int, int]]) -> None:
    data = bytearray(SEED)
    for offset, value in flips:
        data[offset] = value
    read_package(bytes(data))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(SEED)))
def test_every_truncation_of_a_package_is_refused(length: int) -> None:
    if length == len(SEED):
        pkg.read_package(SEED)
        return
    with pytest.raises(PackageError):
        pkg.read_package(SEED[:length])


def _with_manifest(manifest: object) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(SEED)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = json.dumps(manifest).encode() if info.filename == pkg.MANIFEST_MEMBER else src.read(info)
            dst.writestr(info, data)
    return out.getvalue()


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(json.loads(pkg.read_package(SEED).manifest_bytes))), json_values)
def test_any_manifest_field_replaced_by_any_json_value_is_accepted_or_refused(key: str, value: object) -> None:
    manifest = json.loads(pkg.read_package(SEED).manifest_bytes)
    manifest[key] = value
    read_package(_with_manifest(manifest))


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_document_as_manifest_is_refused_cleanly(value: object) -> None:
    with pytest.raises(PackageError):
        pkg.read_package(_with_manifest(value))


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_are_refused_as_an_image_error(data: bytes) -> None:
    parse_image(b"MZ" + data)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1023), st.integers(0, 255)), min_size=1, max_size=16))
def test_a_real_dll_with_damaged_headers_is_refused_cleanly(flips: list[tuple[int, int]]) -> None:
    data = bytearray((WINE_DLLS / "version.dll").read_bytes())
    for offset, value in flips:
        data[offset] = value
    parse_image(bytes(data))


@pytest.mark.slow
@pytest.mark.parametrize("target", ["package", "image"])
def test_the_fuzz_harness_finds_no_crash_within_its_budget(target: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    if target == "package":
        (corpus / "seed.hpk").write_bytes(SEED)
    else:
        (corpus / "version.dll").write_bytes((WINE_DLLS / "version.dll").read_bytes())
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "fuzz" / "fuzz.py"),
            target,
            f"-runs={FUZZ_RUNS}",
            "-max_total_time=30",
            "-max_len=65536",
            "-rss_limit_mb=2048",
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done" in result.stderr
