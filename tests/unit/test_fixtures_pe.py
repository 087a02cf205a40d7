"""The PE fixtures are what they claim: hotpatchable entries per toolchain, a real jump table, a real writable
data change, a real missing hotpatch entry, and base/patched pairs that differ only where each case says."""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pefile
import pytest
from iced_x86 import Decoder, FlowControl, Instruction, Mnemonic, OpKind

from tests.fixtures.pe import CASES, TOOLCHAINS, FixturePair, build_all, function_rvas

WRITE = 0x80000000  # IMAGE_SCN_MEM_WRITE
EXECUTE = 0x20000000  # IMAGE_SCN_MEM_EXECUTE
MS_HOOK_FIRST = bytes.fromhex("488da42400000000")  # lea rsp, [rsp+0]


@pytest.fixture(scope="session")
def pe_fixtures() -> dict[str, FixturePair]:
    return build_all()


@functools.cache
def _load(path: Path) -> tuple[pefile.PE, bytes]:
    pe = pefile.PE(str(path))  # parsed once per module for the whole test session
    _IMAGES.append((pe, bytes(pe.get_memory_mapped_image())))
    return _IMAGES[-1]


@contextmanager
def opened(path: Path) -> Iterator[pefile.PE]:
    yield _load(path)[0]


def image_of(pe: pefile.PE) -> bytes:
    return next(image for loaded, image in _IMAGES if loaded is pe)


_IMAGES: list[tuple[pefile.PE, bytes]] = []


def rvas_of(pair: FixturePair, which: str) -> dict[str, int]:
    return _rvas(pair.module(which), pair.map_file if which == "base" else pair.patched_map_file)


@functools.cache
def _rvas(module: Path, map_file: Path | None) -> dict[str, int]:
    return function_rvas(module, map_file)


def first_instruction(image: bytes, rva: int) -> Instruction:
    return Decoder(64, image[rva : rva + 16], ip=rva).decode()


def padding_before(image: bytes, rva: int, fill: int) -> int:
    count = 0
    while image[rva - 1 - count] == fill:
        count += 1
    return count


def body(image: bytes, rvas: dict[str, int], name: str) -> list[Instruction]:
    """Instructions from the function's entry to the next known function (or 4 KiB)."""
    start = rvas[name]
    end = min([rva for rva in rvas.values() if rva > start] or [start + 4096])
    return list(Decoder(64, image[start:end], ip=start))


def section_of(pe: pefile.PE, rva: int) -> pefile.SectionStructure | None:
    return next((s for s in pe.sections if s.contains_rva(rva)), None)


def entry_functions(pair: FixturePair, which: str) -> tuple[str, ...]:
    return pair.hotpatchable + (pair.new if which == "patched" else ())


def test_every_case_is_built_by_every_toolchain_of_its_language(pe_fixtures: dict[str, FixturePair]) -> None:
    expected = {f"{t.name}/{c.name}" for t in TOOLCHAINS for c in CASES if c.language == t.language}
    assert set(pe_fixtures) == expected
    assert len(expected) >= 34


def test_base_and_patched_builds_share_the_file_name_but_not_the_bytes(
    pe_fixtures: dict[str, FixturePair],
) -> None:
    for key, pair in pe_fixtures.items():
        assert pair.base.name == pair.patched.name == pair.module_name, key
        assert pair.base.parent != pair.patched.parent, key
        assert pair.base.read_bytes() != pair.patched.read_bytes(), key
        if pair.kind == "dll":
            assert (pair.base.parent / "driver.exe").is_file(), key


@pytest.mark.parametrize("toolchain", [t.name for t in TOOLCHAINS])
def test_hotpatchable_functions_carry_the_toolchains_entry(pe_fixtures: dict[str, FixturePair], toolchain: str) -> None:
    checked = 0
    for key, pair in pe_fixtures.items():
        if pair.toolchain != toolchain:
            continue
        for which in ("base", "patched"):
            rvas = rvas_of(pair, which)
            with opened(pair.module(which)) as pe:
                image = image_of(pe)
            for name in entry_functions(pair, which):
                where = f"{key} {which} {name}"
                rva = rvas[name]
                first = first_instruction(image, rva)
                if pair.entry == "ms_hook":
                    assert padding_before(image, rva, 0xCC) >= 32, where
                    assert image[rva : rva + 8] == MS_HOOK_FIRST, where
                elif pair.entry == "nop":
                    assert image[rva - 5 : rva + 2] == b"\x90" * 7, where
                else:
                    assert pair.entry == "ms_hotpatch"
                    assert padding_before(image, rva, 0xCC) >= 6, where
                    assert first.len >= 2, where
                checked += 1
    assert checked > 0


def test_functions_built_without_a_hotpatchable_entry_start_with_a_one_byte_push(
    pe_fixtures: dict[str, FixturePair],
) -> None:
    pairs = [p for p in pe_fixtures.values() if p.unpatchable]
    assert {p.case for p in pairs} == {"no_hotpatch_entry"}
    for pair in pairs:
        for which in ("base", "patched"):
            rvas = rvas_of(pair, which)
            with opened(pair.module(which)) as pe:
                image = image_of(pe)
            for name in pair.unpatchable:
                first = first_instruction(image, rvas[name])
                assert (first.len, first.mnemonic) == (1, Mnemonic.PUSH), f"{pair.key} {which} {name}"
                assert padding_before(image, rvas[name], 0x90) < 5, f"{pair.key} {which} {name}"


def test_jump_table_case_jumps_through_a_table_of_targets_inside_the_function(
    pe_fixtures: dict[str, FixturePair],
) -> None:
    """Both compilers emit lea table; movsxd; add; jmp reg, with int32 entries relative to the table. gcc puts
    the table in .rdata, clang inline in .text right after the function's code."""
    pairs = [p for p in pe_fixtures.values() if p.case == "jump_table"]
    assert len(pairs) == 3
    for pair in pairs:
        for which in ("base", "patched"):
            where = f"{pair.key} {which}"
            rvas = rvas_of(pair, which)
            with opened(pair.module(which)) as pe:
                image = image_of(pe)
                code = body(image, rvas, "classify")
                jumps = [n for n, i in enumerate(code) if i.flow_control == FlowControl.INDIRECT_BRANCH]
                assert jumps, f"{where}: no indirect jump in classify"
                before = code[: jumps[0]]
                lea = next(i for i in reversed(before) if i.mnemonic == Mnemonic.LEA and i.is_ip_rel_memory_operand)
                bound = next(i for i in reversed(before) if i.mnemonic == Mnemonic.CMP)
                table = lea.ip_rel_memory_address
                section = section_of(pe, table)
                assert section is not None, where
                start, end = rvas["classify"], code[-1].next_ip
                entries = struct.unpack_from(f"<{bound.immediate64 + 1}i", image, table)
                targets = {table + e for e in entries}
                assert all(start < t < end for t in targets), f"{where}: table targets {sorted(targets)}"
                assert len(targets) >= 6, where
                if pair.toolchain == "clang":
                    assert section.Characteristics & EXECUTE and start < table < end, where
                else:
                    assert not section.Characteristics & (WRITE | EXECUTE), where


def writable_differences(pair: FixturePair) -> list[str]:
    """Writable sections that differ between the builds, ignoring base-relocated pointers (whose targets move
    with the code in every mingw pair)."""
    with opened(pair.base) as base, opened(pair.patched) as patched:
        relocated = {e.rva for b in getattr(base, "DIRECTORY_ENTRY_BASERELOC", []) for e in b.entries}
        other = {s.Name: s for s in patched.sections}
        out = []
        for section in base.sections:
            if not section.Characteristics & WRITE:
                continue
            twin = other[section.Name]
            a = section.get_data()[: section.Misc_VirtualSize]
            b = twin.get_data()[: twin.Misc_VirtualSize]
            if len(a) != len(b):
                out.append(section.Name.rstrip(b"\0").decode())
                continue
            for offset in range(0, len(a) - 7, 8):
                same = struct.unpack_from("<Q", a, offset) == struct.unpack_from("<Q", b, offset)
                if not same and section.VirtualAddress + offset not in relocated:
                    out.append(section.Name.rstrip(b"\0").decode())
                    break
        return out


def test_only_the_data_layout_case_changes_writable_data(pe_fixtures: dict[str, FixturePair]) -> None:
    for key, pair in pe_fixtures.items():
        if pair.case == "data_layout":
            assert writable_differences(pair) == [".data"], key
        else:
            assert writable_differences(pair) == [], key


def test_data_layout_grows_the_weights_array(pe_fixtures: dict[str, FixturePair]) -> None:
    for pair in (p for p in pe_fixtures.values() if p.case == "data_layout"):
        sizes = []
        for which in ("base", "patched"):
            with opened(pair.module(which)) as pe:
                data = next(s for s in pe.sections if s.Name.rstrip(b"\0") == b".data")
                sizes.append(data.Misc_VirtualSize)
        assert sizes[1] - sizes[0] >= 8, pair.key


IMMEDIATES = {
    OpKind.IMMEDIATE8,
    OpKind.IMMEDIATE16,
    OpKind.IMMEDIATE32,
    OpKind.IMMEDIATE64,
    OpKind.IMMEDIATE8TO16,
    OpKind.IMMEDIATE8TO32,
    OpKind.IMMEDIATE8TO64,
    OpKind.IMMEDIATE32TO64,
}


def meaning(image: bytes, rvas: dict[str, int], name: str) -> list[tuple[object, ...]]:
    """The function's instructions with addresses replaced by what they reach: a function name for a branch,
    the first 24 bytes for a RIP-relative data reference, the displacement of other memory operands. Equal meanings = equal behaviour for these cases."""
    names = {rva: n for n, rva in rvas.items()}
    out: list[tuple[object, ...]] = []
    for i in body(image, rvas, name):
        immediates = tuple(i.immediate(n) for n in range(i.op_count) if i.op_kind(n) in IMMEDIATES)
        if (
            i.flow_control in (FlowControl.CALL, FlowControl.UNCONDITIONAL_BRANCH)
            and i.op0_kind == OpKind.NEAR_BRANCH64
        ):
            target = i.near_branch_target
            ref: object = names.get(target, target - rvas[name])
        elif i.is_ip_rel_memory_operand:
            address = i.ip_rel_memory_address
            ref = names.get(address, image[address : address + 24])
        elif any(i.op_kind(n) == OpKind.MEMORY for n in range(i.op_count)):
            ref = i.memory_displacement
        else:
            ref = None
        out.append((i.mnemonic, immediates, ref))
    return out


def test_changed_functions_differ_between_the_builds(pe_fixtures: dict[str, FixturePair]) -> None:
    """For new_string the code bytes can be identical: the literal sits where the old one was, and only the
    bytes its lea reaches differ. A builder must compare what RIP-relative operands reach, not just bytes."""
    for key, pair in pe_fixtures.items():
        meanings = []
        for which in ("base", "patched"):
            rvas = rvas_of(pair, which)
            with opened(pair.module(which)) as pe:
                image = image_of(pe)
            meanings.append([meaning(image, rvas, name) for name in pair.changed])
        for name, base, patched in zip(pair.changed, *meanings, strict=True):
            assert base != patched, f"{key} {name}"


def test_new_functions_exist_only_in_the_patched_build(pe_fixtures: dict[str, FixturePair]) -> None:
    with_new = [p for p in pe_fixtures.values() if p.new]
    assert {p.case for p in with_new} == {"new_helper", "callback"}
    for pair in with_new:
        base, patched = rvas_of(pair, "base"), rvas_of(pair, "patched")
        for name in pair.new:
            assert name not in base and name in patched, f"{pair.key} {name}"


def test_both_builds_export_the_same_names_including_case_entry(pe_fixtures: dict[str, FixturePair]) -> None:
    for key, pair in pe_fixtures.items():
        names = []
        for which in ("base", "patched"):
            with opened(pair.module(which)) as pe:
                names.append({s.name for s in pe.DIRECTORY_ENTRY_EXPORT.symbols})
        assert names[0] == names[1], key
        assert b"case_entry" in names[0], key
        assert {n.encode() for n in pair.changed} - names[0] - {b"helper_new", b"cb_new"} <= set(), key


def test_mingw_builds_keep_a_symbol_table_and_clang_builds_a_map_and_pdb(
    pe_fixtures: dict[str, FixturePair],
) -> None:
    for key, pair in pe_fixtures.items():
        for which in ("base", "patched"):
            with opened(pair.module(which)) as pe:
                symbols = pe.FILE_HEADER.NumberOfSymbols
                debug = [d.entry for d in getattr(pe, "DIRECTORY_ENTRY_DEBUG", []) if d.entry is not None]
            if pair.toolchain == "clang":
                assert symbols == 0, key
                assert pair.map_file is not None and pair.map_file.is_file(), key
                assert pair.module(which).with_suffix(".pdb").is_file(), key
                assert any(getattr(e, "CvSignature", b"") == b"RSDS" for e in debug), key
            else:
                assert symbols > 0 and pair.map_file is None, key


def test_cxx_exception_functions_have_unwind_info_with_the_gcc_personality(
    pe_fixtures: dict[str, FixturePair],
) -> None:
    """risky() and case_entry() each have one RUNTIME_FUNCTION starting at the entry (after the five NOPs), with
    an exception handler (UNW_FLAG_EHANDLER | UNW_FLAG_UHANDLER) that is __gxx_personality_seh0 and an LSDA."""
    pair = pe_fixtures["gxx/cxx_exception"]
    for which in ("base", "patched"):
        rvas = rvas_of(pair, which)
        with opened(pair.module(which)) as pe:
            entries = {e.struct.BeginAddress: e for e in pe.DIRECTORY_ENTRY_EXCEPTION}
        for name in ("risky", "case_entry"):
            unwind = entries[rvas[name]].unwindinfo
            assert unwind.Flags == 3, f"{which} {name}"
            assert unwind.ExceptionHandler == rvas["__gxx_personality_seh0"], f"{which} {name}"


def test_functions_outside_the_change_mean_the_same_in_both_builds(pe_fixtures: dict[str, FixturePair]) -> None:
    """The patched source is a minimal edit: every other hotpatchable function compiles to the same
    instructions, reaching the same functions and the same data."""
    compared = 0
    for key, pair in pe_fixtures.items():
        same = [name for name in pair.hotpatchable if name not in pair.changed]
        meanings = []
        for which in ("base", "patched"):
            rvas = rvas_of(pair, which)
            with opened(pair.module(which)) as pe:
                image = image_of(pe)
            meanings.append([meaning(image, rvas, name) for name in same])
        for name, base, patched in zip(same, *meanings, strict=True):
            assert base == patched, f"{key} {name}"
            compared += 1
    assert compared >= 40
