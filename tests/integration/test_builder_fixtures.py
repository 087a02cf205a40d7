"""The patch builder over every real fixture pair (mingw gcc, gcc -fpatchable-function-entry, g++, clang + lld-link).

Each pair must give the selection or refusal its case declares, and the blob, with its relocations applied at a
known base address, must disassemble to the same symbolic instruction stream as the patched functions.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import iced_x86
import pytest

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.package import Package, read_package
from ansible_collections.rebootless.windows.plugins.plugin_utils._builder import (
    BuildRefused,
    BuildRequest,
    BuildResult,
    build,
)
from ansible_collections.rebootless.windows.plugins.plugin_utils._builder.model import Image, load_image
from tests.fixtures.pe import FixturePair, build_all

pytestmark = [pytest.mark.wine, pytest.mark.integration]

LOAD_BASE = 0x7FF6_1000_0000  # where the test pretends the base module is loaded (B)
PAIRS = build_all()


def request_for(pair: FixturePair, cold_only_ok: bool = False, identical: bool = False) -> BuildRequest:
    patched = pair.base if identical else pair.patched
    patched_map = pair.map_file if identical else pair.patched_map_file
    return BuildRequest(
        base=str(pair.base),
        patched=str(patched),
        package_id=f"{pair.case}-fix",
        version="1.0.0",
        base_map=str(pair.map_file) if pair.map_file else None,
        patched_map=str(patched_map) if patched_map else None,
        cold_only_ok=cold_only_ok,
    )


@pytest.mark.parametrize("key", sorted(PAIRS))
def test_fixture_pair_gives_the_selection_or_refusal_its_case_declares(key: str) -> None:
    pair = PAIRS[key]
    if pair.refused:
        with pytest.raises(BuildRefused) as caught:
            build(request_for(pair))
        refused = {r.function for r in caught.value.refusals}
        assert set(pair.refused) <= refused
        assert pair.refusal is not None
        for refusal in caught.value.refusals:
            if refusal.function in pair.refused:
                assert pair.refusal in refusal.reason.lower() and "cold path" in refusal.reason
        cold = build(request_for(pair, cold_only_ok=True))
        assert not cold.hotpatchable and cold.patched == [] and read_package(cold.package).blob == b""
        assert read_package(cold.package).patched_module == pair.patched.read_bytes()
        return
    result = build(request_for(pair))
    assert result.hotpatchable, result.refused
    assert sorted(result.patched) == sorted(pair.changed)
    assert sorted(result.new) == sorted(pair.new)
    assert result.refused == []


@pytest.mark.parametrize("key", sorted(PAIRS))
def test_identical_images_patch_nothing(key: str) -> None:
    result = build(request_for(PAIRS[key], identical=True))
    assert result.patched == [] and result.new == [] and result.refused == []
    assert not result.hotpatchable


@pytest.mark.parametrize("key", sorted(k for k, p in PAIRS.items() if not p.refused))
def test_same_inputs_give_byte_identical_packages(key: str) -> None:
    first = build(request_for(PAIRS[key]))
    second = build(request_for(PAIRS[key]))
    assert first.package == second.package and first.sha256 == second.sha256


@pytest.mark.parametrize("key", sorted(k for k, p in PAIRS.items() if not p.refused))
def test_relocated_blob_disassembles_to_the_patched_functions(key: str) -> None:
    pair = PAIRS[key]
    result = build(request_for(pair))
    package = read_package(result.package)
    base = load_image(str(pair.base), str(pair.map_file) if pair.map_file else None)
    patched = load_image(str(pair.patched), str(pair.patched_map_file) if pair.patched_map_file else None)
    blob_at = LOAD_BASE + ((base.pin.size_of_image + 0xFFFF) & ~0xFFFF)
    blob = apply_relocations(package, LOAD_BASE, blob_at)
    placed = {f.name: (f.blob_offset, f.blob_size) for f in package.manifest.functions}
    placed.update({f.name: (f.blob_offset, f.blob_size) for f in package.manifest.new_functions})
    assert placed
    for name, (offset, size) in placed.items():
        symbol = patched.symbols[name]
        want = symbolic_stream(
            patched.read(symbol.rva, symbol.size), symbol.rva, image_resolver(patched, symbol.rva, symbol.end, base)
        )
        got = symbolic_stream(
            blob[offset : offset + size],
            blob_at + offset,
            blob_resolver(blob, blob_at, base, placed, LOAD_BASE, blob_at + offset, blob_at + offset + size),
        )
        assert got == want, name


@pytest.mark.parametrize("key", sorted(k for k, p in PAIRS.items() if not p.refused))
def test_unwind_table_covers_every_blob_function_that_has_unwind_info(key: str) -> None:
    pair = PAIRS[key]
    result: BuildResult = build(request_for(pair))
    manifest = result.manifest
    patched = load_image(str(pair.patched), str(pair.patched_map_file) if pair.patched_map_file else None)
    with_pdata = {begin for begin, _end, _unwind in patched.functions}
    carried = list(manifest.functions) + list(manifest.new_functions)
    needed = [f for f in carried if patched.symbols[f.name].rva in with_pdata]
    if not needed:  # clang leaf functions have no .pdata entry at all
        assert manifest.unwind is None
        return
    assert manifest.unwind is not None
    blob = apply_relocations(read_package(result.package), 0, 0)  # B = A = 0: entries become blob offsets
    entries = [struct.unpack_from("<III", blob, manifest.unwind.offset + 12 * i) for i in range(manifest.unwind.count)]
    assert entries == sorted(entries)
    for function in needed:
        (entry,) = [e for e in entries if e[0] == function.blob_offset]
        assert entry[1] == function.blob_offset + function.blob_size
        original = patched.read(patched.function_range(patched.symbols[function.name].rva)[2], 4)  # type: ignore[index]
        assert blob[entry[2] : entry[2] + 4] == original  # UNWIND_INFO header copied as is


def test_cxx_landing_pads_keep_their_personality_bound_to_the_base_image() -> None:
    result = build(request_for(PAIRS["gxx/cxx_exception"]))
    handlers = [r for r in result.manifest.relocations if r.kind == "rva32" and r.target == "base"]
    assert any(r.symbol == "__gxx_personality_seh0" for r in handlers)


def test_callback_marks_the_new_function_as_a_cfg_target() -> None:
    result = build(request_for(PAIRS["gcc/callback"]))
    (new,) = result.manifest.new_functions
    assert new.name == "cb_new" and new.address_taken
    assert result.manifest.cfg_targets == (new.blob_offset,)


def test_new_string_is_carried_into_the_blob() -> None:
    result = build(request_for(PAIRS["gcc/new_string"]))
    assert b"hotpatched string\0" in read_package(result.package).blob


# -- helpers ----------------------------------------------------------------------------------------------------


def apply_relocations(package: Package, load_base: int, blob_at: int) -> bytes:
    """The engine's arithmetic (package.py docstring), done independently here."""
    blob = bytearray(package.blob)
    for reloc in package.manifest.relocations:
        target = (load_base if reloc.target == "base" else blob_at) + reloc.value
        place = blob_at + reloc.blob_offset
        if reloc.kind == "rel32":
            struct.pack_into("<i", blob, reloc.blob_offset, target + reloc.addend - place)
        elif reloc.kind == "abs64":
            struct.pack_into("<Q", blob, reloc.blob_offset, (target + reloc.addend) & (2**64 - 1))
        else:
            struct.pack_into("<I", blob, reloc.blob_offset, target + reloc.addend - load_base)
    return bytes(blob)


Resolver = Callable[[int, int, int], str]


def symbolic_stream(code: bytes, ip: int, resolve: Resolver) -> list[tuple[object, ...]]:
    """(opcode, masked bytes, symbols) per instruction: every address an instruction names becomes a symbol."""
    stream: list[tuple[object, ...]] = []
    decoder = iced_x86.Decoder(64, code, ip=ip)
    skip_to = -1
    for instr in decoder:
        if instr.ip < skip_to:
            continue
        raw = bytearray(code[instr.ip - ip : instr.ip - ip + instr.len])
        offsets = decoder.get_constant_offsets(instr)
        names: list[str] = []
        if instr.op_count and instr.op0_kind in (iced_x86.OpKind.NEAR_BRANCH64, iced_x86.OpKind.NEAR_BRANCH32):
            names.append(resolve(instr.near_branch_target, instr.ip, 0))
            raw[offsets.immediate_offset : offsets.immediate_offset + offsets.immediate_size] = bytes(
                offsets.immediate_size
            )
        if instr.is_ip_rel_memory_operand:
            name = resolve(instr.ip_rel_memory_address, instr.ip, 0)
            names.append(name)
            raw[offsets.displacement_offset : offsets.displacement_offset + 4] = bytes(4)
            target = instr.ip_rel_memory_address
            if name.startswith("table:") and ip <= target < ip + len(code):  # an inline table: data, not code
                skip_to = max(skip_to, target + 4 * (name.count(",") + 1))
        if offsets.immediate_size == 8:
            value = instr.immediate(1) if instr.op_count > 1 else 0
            names.append(resolve(value, instr.ip, 8))
            raw[offsets.immediate_offset : offsets.immediate_offset + 8] = bytes(8)
        stream.append((instr.code, bytes(raw) if instr.code != iced_x86.Code.INVALID else b"", tuple(names)))
    return stream


def _table(read: Callable[[int, int], bytes], at: int, begin: int, end: int) -> str | None:
    entries: list[int] = []
    while len(entries) < 512:
        try:
            (delta,) = struct.unpack("<i", read(at + 4 * len(entries), 4))
        except (struct.error, ValueError, IndexError):
            break
        if not begin <= at + delta < end:
            break
        entries.append(at + delta - begin)
    return f"table:{entries}" if len(entries) >= 2 else None


def _constant(data: bytes) -> str:
    nul = data.find(b"\0")
    return "const:" + (data[: nul + 1] if 0 <= nul < 16 else data[:16]).hex()


def image_resolver(image: Image, begin: int, end: int, base: Image) -> Resolver:
    """Symbols of the patched image; read-only data the base lacks is carried, so it compares by content."""

    def resolve(address: int, _ip: int, width: int) -> str:
        rva = address - image.pin.image_base if width == 8 else address
        if begin <= rva < end:
            return _table(image.read, rva, begin, end) or f"self+{rva - begin}"
        target = image.describe(rva)
        carried = target.kind == "data" and not target.writable and target.name not in base.symbols
        if target.kind == "const" or carried:
            table = _table(image.read, rva, begin, end)
            return table if table else _constant(image.read(rva, 16))
        return f"{target.kind}:{target.name}+{target.offset}"

    return resolve


def blob_resolver(
    blob: bytes, blob_at: int, base: Image, placed: dict[str, tuple[int, int]], load_base: int, begin: int, end: int
) -> Resolver:
    def read(at: int, size: int) -> bytes:
        if not 0 <= at - blob_at <= len(blob) - size:
            raise ValueError("outside the blob")
        return blob[at - blob_at : at - blob_at + size]

    def resolve(address: int, _ip: int, _width: int) -> str:
        if begin <= address < end:
            return _table(read, address, begin, end) or f"self+{address - begin}"
        if load_base <= address < load_base + base.pin.size_of_image:
            target = base.describe(address - load_base)
            if target.kind == "const":
                return _constant(base.read(address - load_base, 16))
            return f"{target.kind}:{target.name}+{target.offset}"
        offset = address - blob_at
        for name, (start, size) in placed.items():
            if start <= offset < start + size:
                return f"function:{name}+{offset - start}"
        table = _table(read, address, begin, end)
        if table:
            return table
        if 0 <= offset < len(blob) and blob[offset] == 0xE9:  # a veneer: follow it
            (delta,) = struct.unpack_from("<i", blob, offset + 1)
            return resolve(address + 5 + delta, address, 0)
        return _constant(blob[offset : offset + 16])

    return resolve


def test_blob_resolver_sees_the_load_base(tmp_path: Path) -> None:
    """Guard for the helpers above: an address in the base image resolves through the base image."""
    pair = PAIRS["gcc/changed_constant"]
    base = load_image(str(pair.base))
    symbol = base.symbols["scale"]
    resolve = blob_resolver(b"", 0x1000, base, {}, LOAD_BASE, 0, 0)
    assert resolve(LOAD_BASE + symbol.rva, 0, 0) == "function:scale+0"


def test_command_line_writes_the_package_or_exits_1_with_reasons(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "scripts" / "hotpatch-build"
    good, bad = PAIRS["gcc/new_string"], PAIRS["gcc/data_layout"]
    out = tmp_path / "fix.hpk"
    common = ["--out", str(out), "--id", "fix", "--version", "1", "--json"]
    done = subprocess.run(
        [sys.executable, str(script), "--base", str(good.base), "--patched", str(good.patched), *common],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert read_package(str(out)).manifest.functions[0].name == "describe"
    out.unlink()
    done = subprocess.run(
        [sys.executable, str(script), "--base", str(bad.base), "--patched", str(bad.patched), *common],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1 and not out.exists()
    assert "weights" in done.stderr and "writable data" in done.stderr
    done = subprocess.run(
        [sys.executable, str(script), "--base", str(tmp_path), "--patched", str(bad.patched), *common],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2 and "cannot read module" in done.stderr


def test_pins_carry_the_pdb_identity_of_codeview_builds() -> None:
    from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.image import pin_from_file

    clang = pin_from_file(str(PAIRS["clang/changed_constant"].base))
    assert clang.pdb_guid is not None and len(clang.pdb_guid) == 36 and clang.pdb_age == 1
    mingw = pin_from_file(str(PAIRS["gcc/changed_constant"].base))
    assert mingw.pdb_guid is None and mingw.pdb_age is None
