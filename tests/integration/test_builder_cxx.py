"""C++ catch clauses in a changed function: the LSDA's type table is carried and its typeinfo cells bound.

Built here from the cxx_exception fixture source with case_entry() (the function holding the catch) changed too,
so the blob carries an LSDA with a type table (g++ encodes its entries pc-relative and indirect, through a
pointer cell in .data that holds &typeinfo).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ansible_collections.rebootless.windows.plugins.plugin_utils._builder import BuildRequest, build
from ansible_collections.rebootless.windows.plugins.plugin_utils._builder.model import load_image

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "tests" / "fixtures" / "pe" / "src" / "cases" / "cxx_exception.cpp"
INCLUDE = ROOT / "tests" / "fixtures" / "pe" / "src"

pytestmark = [pytest.mark.wine, pytest.mark.integration]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("cxx-catch")
    text = SOURCE.read_text()
    old = "return runs == 1 ? 2000000 + x : -1;"
    assert old in text, "the fixture source changed: update this test"
    source = folder / "catch.cpp"
    source.write_text(text.replace(old, "return runs == 1 ? PICK(2000000, 3000000) + x : -1;"))
    built = []
    for which in ("base", "patched"):
        out = folder / which / "catch.dll"
        out.parent.mkdir()
        defines = ["-DPATCHED"] if which == "patched" else []
        command = ["x86_64-w64-mingw32-g++", "-O2", "-std=gnu++17", "-fpatchable-function-entry=7,5", *defines]
        command += [f"-I{INCLUDE}", "-shared", "-o", str(out), str(source), "-static-libgcc", "-static-libstdc++"]
        command += ["-static", "-Wl,--no-insert-timestamp", "-Wl,--image-base=0x6b000000"]
        subprocess.run(
            command,
            check=True,
        )
        built.append(out)
    return built[0], built[1]


def test_changed_catching_function_carries_its_type_table_bound_to_the_base_typeinfo(pair: tuple[Path, Path]) -> None:
    base_path, patched_path = pair
    result = build(BuildRequest(str(base_path), str(patched_path), "catch-fix", "1"))
    assert "case_entry" in result.patched and result.refused == []
    manifest = result.manifest
    assert manifest.unwind is not None
    unwind_area = min(f.blob_offset + f.blob_size for f in manifest.functions)
    type_cells = [
        r
        for r in manifest.relocations
        if r.kind == "rel32" and r.target == "base" and r.blob_offset >= unwind_area and r.addend == 0
    ]
    assert type_cells, "the LSDA type table entry was not relocated"
    base = load_image(str(base_path))
    for cell in type_cells:
        pointed = base.describe(base.pointer(cell.value))
        assert (pointed.kind, pointed.name) == ("data", "_ZTISt13runtime_error")
    personalities = {r.symbol for r in manifest.relocations if r.kind == "rva32" and r.target == "base"}
    assert personalities == {"__gxx_personality_seh0"}
