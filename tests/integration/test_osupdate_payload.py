"""KB payload classification on real PE images carrying a hot patch table, inside real cabinet files.

The images are mingw-w64 DLLs with an IMAGE_LOAD_CONFIG_DIRECTORY64 and an IMAGE_HOT_PATCH_INFO written in by
tests/fixtures/hotpatch_table; llvm-readobj (an independent PE reader) confirms the load configuration. KBs are
real cabinets made with gcab and opened with cabextract (libmspack), the controller-side extractor.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pefile
import pytest

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.errors import ImageError, PackageError
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.osupdate.cabinet import CabExtractor, open_kb
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.osupdate.classify import (
    classify_files,
    installed_lookup,
)
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.osupdate.hotpatch_table import (
    read_hotpatch_table,
)
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.osupdate.runner import SubprocessRunner
from tests.fixtures.hotpatch_table import build_image, have_gcab, have_mingw, identity, make_cab

pytestmark = [
    pytest.mark.skipif(not have_mingw(), reason="needs x86_64-w64-mingw32-gcc (gcc-mingw-w64-x86-64)"),
    pytest.mark.integration,
]
needs_cab_tools = pytest.mark.skipif(
    not (have_gcab() and shutil.which("cabextract")), reason="needs gcab and cabextract (Debian packages)"
)

BASELINE = 0x67800000  # TimeDateStamp of the "baseline month" build installed on a ready host
OLDER = 0x66000000  # an older build: a host that missed the baseline


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """System32 of two hosts (on the baseline, and behind it) and the KB's payload files."""
    root = tmp_path_factory.mktemp("hotpatch_table")
    on_baseline = build_image(root / "host_baseline", "ntfoo.dll", 1, BASELINE)
    behind = build_image(root / "host_behind", "ntfoo.dll", 0, OLDER)
    build_image(root / "host_baseline", "other.dll", 5, BASELINE)
    shutil.copy(root / "host_baseline" / "other.dll", root / "host_behind" / "other.dll")
    base = identity(on_baseline)
    payload = root / "payload"
    hotpatch = build_image(payload / "amd64_hotpatch", "ntfoo.dll", 2, BASELINE + 1, [base])
    full = build_image(payload / "amd64_full", "ntfoo.dll", 2, BASELINE + 2)
    plain = build_image(payload / "amd64_other", "other.dll", 6, BASELINE + 3)
    delta = payload / "f" / "kernelx.dll"
    delta.parent.mkdir(parents=True)
    delta.write_bytes(b"PA30" + bytes(60))
    for c in payload.rglob("*.c"):
        c.unlink()
    return {
        "on_baseline": on_baseline.parent,
        "behind": behind.parent,
        "hotpatch": hotpatch,
        "full": full,
        "plain": plain,
        "delta": delta,
        "payload": payload,
        "base": on_baseline,
    }


def test_the_table_lists_the_base_image_it_patches(images: dict[str, Path]) -> None:
    base = identity(images["base"])
    table = read_hotpatch_table(images["hotpatch"].read_bytes(), "ntfoo.dll")
    assert table is not None
    assert (table.version, table.sequence_number, table.size) == (2, 7, 24 + 4 + 32 + 52)
    [entry] = table.bases
    assert (entry.time_date_stamp, entry.checksum) == (base.time_date_stamp, base.checksum)
    assert entry.obligatory and entry.sequence_number == 7
    assert entry.sha256 == (base.sha256.hex(),)
    assert table.base_for(base.time_date_stamp, base.checksum) is entry
    assert table.base_for(OLDER, base.checksum) is None


def test_llvm_readobj_sees_the_same_hot_patch_table_offset(images: dict[str, Path]) -> None:
    tool = shutil.which("llvm-readobj") or shutil.which("llvm-readobj-14")
    if tool is None:
        pytest.skip("needs llvm-readobj (Debian package llvm)")
    out = subprocess.run(
        [tool, "--coff-load-config", str(images["hotpatch"])], capture_output=True, text=True, check=True
    )
    found = re.search(r"HotPatchTableOffset: (0x[0-9A-Fa-f]+)", out.stdout)
    table = read_hotpatch_table(images["hotpatch"].read_bytes())
    assert found is not None and table is not None and int(found.group(1), 16) == table.rva


def test_an_ordinary_image_has_no_table(images: dict[str, Path]) -> None:
    assert read_hotpatch_table(images["plain"].read_bytes()) is None
    assert read_hotpatch_table(images["base"].read_bytes()) is None


def test_a_table_that_claims_more_bases_than_it_holds_is_refused(images: dict[str, Path]) -> None:
    pe = pefile.PE(str(images["hotpatch"]))
    table = read_hotpatch_table(images["hotpatch"].read_bytes())
    assert table is not None
    pe.set_bytes_at_rva(table.rva + 16, struct.pack("<I", 1000))  # BaseImageCount
    with pytest.raises(ImageError, match="lists 1000 bases"):
        read_hotpatch_table(pe.write(), "ntfoo.dll")
    pe.set_bytes_at_rva(table.rva, struct.pack("<I", 9))  # Version
    with pytest.raises(ImageError, match="version 9"):
        read_hotpatch_table(pe.write(), "ntfoo.dll")


def payload_files(images: dict[str, Path]) -> list[str]:
    return [str(images[k]) for k in ("hotpatch", "full", "delta")]


def test_a_host_on_the_baseline_will_hotpatch(images: dict[str, Path]) -> None:
    result = classify_files(payload_files(images), installed_lookup([str(images["on_baseline"])]))
    kinds = {(f.name, f.kind) for f in result.files}
    assert kinds == {("ntfoo.dll", "hotpatch"), ("ntfoo.dll", "covered"), ("kernelx.dll", "unclassified")}
    assert result.verdict == "hotpatch"
    assert result.reasons == ["hotpatches ntfoo.dll"]
    assert result.as_dict()["unclassified"] == ["kernelx.dll"]


def test_a_host_behind_the_baseline_needs_a_reboot_and_is_told_why(images: dict[str, Path]) -> None:
    result = classify_files(payload_files(images), installed_lookup([str(images["behind"])]))
    assert result.verdict == "needs_reboot"
    kinds = sorted(f.kind for f in result.files)
    assert kinds == ["replaces_loaded", "unclassified", "wrong_base"]
    base = identity(images["base"])
    wrong = next(f for f in result.files if f.kind == "wrong_base")
    assert f"0x{OLDER:08x}" in wrong.reason
    assert f"0x{base.time_date_stamp:08x}/0x{base.checksum:08x}" in wrong.reason
    assert "install the baseline" in wrong.reason


def test_a_replaced_file_without_a_hotpatch_needs_a_reboot(images: dict[str, Path]) -> None:
    result = classify_files(
        [str(images["hotpatch"]), str(images["plain"])], installed_lookup([str(images["on_baseline"])])
    )
    assert result.verdict == "needs_reboot"
    assert any(r.startswith("other.dll: replaces ") for r in result.reasons)


def test_host_blockers_turn_a_hotpatch_into_a_reboot(images: dict[str, Path]) -> None:
    result = classify_files(
        payload_files(images), installed_lookup([str(images["on_baseline"])]), ["VBS is not running (off)"]
    )
    assert result.verdict == "needs_reboot"
    assert result.reasons[0] == "VBS is not running (off)"


def test_installed_names_match_case_insensitively_as_on_windows(images: dict[str, Path], tmp_path: Path) -> None:
    shutil.copy(images["base"], tmp_path / "NTFOO.DLL")
    result = classify_files([str(images["hotpatch"])], installed_lookup([str(tmp_path)]))
    assert result.verdict == "hotpatch"


@needs_cab_tools
def test_an_msu_with_a_cab_inside_opens_to_its_payload(images: dict[str, Path], tmp_path: Path) -> None:
    payload = images["payload"]
    members = [str(Path(f).relative_to(payload)) for f in payload_files(images)]
    inner = make_cab(tmp_path / "Windows11.0-KB5099999-x64.cab", payload, members)
    (tmp_path / "WSUSSCAN.cab").write_bytes(make_cab(tmp_path / "scan.cab", payload, members[:1]).read_bytes())
    msu = make_cab(tmp_path / "windows11.0-kb5099999-x64.msu", tmp_path, [inner.name, "WSUSSCAN.cab"])
    work = tmp_path / "work"
    work.mkdir()
    files = open_kb(str(msu), str(work), CabExtractor(SubprocessRunner()))
    names = sorted(Path(f).relative_to(work).as_posix().split(".cab.d/", 1)[1] for f in files)
    assert names == sorted(members)
    result = classify_files(files, installed_lookup([str(images["on_baseline"])]))
    assert result.verdict == "hotpatch"
    for name in members:  # byte-exact through MSZIP compression and two cabinet levels
        extracted = next(f for f in files if f.endswith(name))
        assert Path(extracted).read_bytes() == (payload / name).read_bytes()


@needs_cab_tools
def test_a_file_that_is_not_a_cabinet_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "kb.msu"
    bogus.write_bytes(b"PK\x03\x04 not a cab")
    with pytest.raises(PackageError, match="not a Microsoft cabinet"):
        open_kb(str(bogus), str(tmp_path), CabExtractor(SubprocessRunner()))


@needs_cab_tools
def test_a_damaged_cabinet_fails_with_the_extractors_message(images: dict[str, Path], tmp_path: Path) -> None:
    cab = make_cab(tmp_path / "kb.cab", images["payload"], ["amd64_hotpatch/ntfoo.dll"])
    data = bytearray(cab.read_bytes())
    cut = tmp_path / "cut.cab"
    cut.write_bytes(bytes(data[: len(data) // 2]))
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(PackageError, match="cabextract could not open"):
        open_kb(str(cut), str(work), CabExtractor(SubprocessRunner()))


@needs_cab_tools
def test_a_member_named_with_dot_dot_stays_inside_the_extraction_directory(tmp_path: Path) -> None:
    src = tmp_path / "src" / "a"
    src.mkdir(parents=True)
    (tmp_path / "src" / "evil.dll").write_bytes(b"MZ evil")
    cab = make_cab(tmp_path / "evil.cab", src, ["../evil.dll"], compress=False)
    work = tmp_path / "work"
    work.mkdir()
    try:
        files = open_kb(str(cab), str(work), CabExtractor(SubprocessRunner()))
    except PackageError:
        files = []
    assert all(Path(f).resolve().is_relative_to(work.resolve()) for f in files)
    assert not (tmp_path / "evil.dll.extracted").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.cab", "src", "work"]
