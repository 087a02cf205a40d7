"""Relocation math and jump encodings, per the package contract (package.py docstring)."""

from __future__ import annotations

import struct

import pytest

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.errors import ImageError
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.host.relocate import (
    jump_bytes,
    long_jump,
    relocate,
    short_jump_back,
)
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.package import PatchedFunction, Relocation

B = 0x180000000
A = 0x180230000


def test_rel32_to_a_base_rva_is_target_plus_addend_minus_field_address() -> None:
    out = relocate(bytes(16), [Relocation(3, "rel32", "base", 0x1000, -4)], A, B)
    (value,) = struct.unpack_from("<i", out, 3)
    assert A + 3 + 4 + value == B + 0x1000  # the CPU adds the displacement to the next instruction's address


def test_rel32_to_a_blob_offset_is_position_independent() -> None:
    reloc = [Relocation(0, "rel32", "blob", 0x40, -4)]
    assert relocate(bytes(8), reloc, A, B) == relocate(bytes(8), reloc, A + 0x10000, B)
    (value,) = struct.unpack_from("<i", relocate(bytes(8), reloc, A, B), 0)
    assert value == 0x40 - 4


def test_abs64_is_the_absolute_address() -> None:
    out = relocate(bytes(16), [Relocation(8, "abs64", "blob", 0x20, 2), Relocation(0, "abs64", "base", 0x3000)], A, B)
    assert struct.unpack_from("<QQ", out, 0) == (B + 0x3000, A + 0x22)


def test_rva32_is_relative_to_the_module_base_even_for_blob_targets() -> None:
    out = relocate(bytes(8), [Relocation(0, "rva32", "blob", 0x10), Relocation(4, "rva32", "base", 0x1234)], A, B)
    assert struct.unpack_from("<II", out, 0) == (A - B + 0x10, 0x1234)


def test_relocation_leaves_other_bytes_alone() -> None:
    blob = bytes(range(16))
    out = relocate(blob, [Relocation(4, "rva32", "base", 0)], A, B)
    assert out[:4] == blob[:4] and out[8:] == blob[8:]


def test_rel32_beyond_2gb_is_refused_with_the_symbol() -> None:
    with pytest.raises(ImageError, match="sprintf"):
        relocate(bytes(8), [Relocation(0, "rel32", "base", 0x1000, -4, "sprintf")], B + 0x90000000, B)


def test_rva32_below_the_module_is_refused() -> None:
    with pytest.raises(ImageError, match="2 GB above"):
        relocate(bytes(8), [Relocation(0, "rva32", "blob", 0)], B - 0x1000, B)


def test_long_jump_lands_on_its_target() -> None:
    code = long_jump(0x1000, 0x5000)
    assert code[0] == 0xE9 and 0x1000 + 5 + struct.unpack("<i", code[1:])[0] == 0x5000
    with pytest.raises(ImageError):
        long_jump(0, 1 << 33)


def test_short_jump_goes_back_to_the_long_jump_in_the_padding() -> None:
    assert short_jump_back() == b"\xeb\xf9"  # entry + 2 - 7 == entry - 5


def test_jump_bytes_place_the_long_jump_in_the_last_five_padding_bytes() -> None:
    fn = PatchedFunction("fee", 0x1390, 0x40, bytes.fromhex("4889e5"), 0x1388, b"\xcc" * 8, 0x60, 0x20)
    pad_at, jump, entry_at, short = jump_bytes(fn, B, A)
    assert (pad_at, entry_at, short) == (B + 0x138B, B + 0x1390, b"\xeb\xf9")
    assert pad_at + 5 + struct.unpack("<i", jump[1:])[0] == A + 0x60
