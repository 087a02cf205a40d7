"""Refusals the fixture cases do not cover, from small mingw-w64 pairs built here: each names what to do."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from ansible_collections.rebootless.windows.plugins.plugin_utils._builder import BuildRefused, BuildRequest, build

pytestmark = [pytest.mark.wine, pytest.mark.integration]

HEADER = "#define HP __attribute__((ms_hook_prologue, noipa)) __declspec(dllexport)\n"


def pair(tmp_path: Path, base: str, patched: str) -> tuple[Path, Path]:
    built = []
    for which, body in (("base", base), ("patched", patched)):
        folder = tmp_path / which
        folder.mkdir()
        source = folder / "mod.c"
        source.write_text(HEADER + body)
        out = folder / "mod.dll"
        subprocess.run(
            ["x86_64-w64-mingw32-gcc", "-O2", "-shared", "-o", str(out), str(source), "-Wl,--no-insert-timestamp"],
            check=True,
        )
        built.append(out)
    return built[0], built[1]


def refusals(base: Path, patched: Path) -> dict[str, str]:
    with pytest.raises(BuildRefused) as caught:
        build(BuildRequest(str(base), str(patched), "fix", "1"))
    return {r.function: r.reason for r in caught.value.refusals}


def test_a_call_to_an_import_the_base_lacks_is_refused(tmp_path: Path) -> None:
    base, patched = pair(
        tmp_path,
        "HP long long ticks(long long x) { return x + 1; }\n",
        "#include <windows.h>\nHP long long ticks(long long x) { return x + (long long)GetTickCount64(); }\n",
    )
    reasons = refusals(base, patched)
    assert "ticks" in reasons
    assert "kernel32.dll!GetTickCount64" in reasons["ticks"] and "does not import" in reasons["ticks"]


def test_a_new_static_constructor_is_refused(tmp_path: Path) -> None:
    body = "static long long seed;\nHP long long value(long long x) { return x + seed; }\n"
    ctor = "__attribute__((constructor)) static void init_seed(void) { seed = 42; }\n"
    base, patched = pair(tmp_path, body, body + ctor)
    reasons = refusals(base, patched)
    assert "__CTOR_LIST__" in reasons and "constructor" in reasons["__CTOR_LIST__"]


def test_a_changed_initial_value_of_writable_data_is_refused(tmp_path: Path) -> None:
    body = "long long limit = {};\nHP long long clamp(long long x) {{ return x > limit ? limit : x; }}\n"
    base, patched = pair(tmp_path, body.format(10), body.format(20))
    reasons = refusals(base, patched)
    assert "initial value" in reasons["limit"] and "cold path" in reasons["limit"]


def test_images_for_different_machines_are_refused(tmp_path: Path) -> None:
    body = "HP long long one(long long x) { return x; }\n"
    base, patched = pair(tmp_path, body, body)
    data = bytearray(patched.read_bytes())
    (e_lfanew,) = struct.unpack_from("<I", data, 0x3C)
    struct.pack_into("<H", data, e_lfanew + 4, 0xAA64)  # ARM64
    other = tmp_path / "arm64.dll"
    other.write_bytes(bytes(data))
    reasons = refusals(base, other)
    assert "different CPUs" in reasons["mod.dll"]
