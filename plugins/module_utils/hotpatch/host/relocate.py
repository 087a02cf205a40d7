"""Relocation of ``code.bin`` at its address in the target, and the jump encodings of the switch.

Semantics are the package contract's (package.py): ``S`` = ``B + value`` (target "base") or ``A + value``
(target "blob"), ``P`` = ``A + blob_offset``; rel32 = int32(S + addend - P), abs64 = uint64(S + addend),
rva32 = uint32(S + addend - B). A value that does not fit its field raises ImageError: the blob landed too far
from the module, which allocate_near must prevent.
"""

from __future__ import annotations

import struct
from typing import Sequence, Tuple

from ..errors import ImageError
from ..package import LONG_JUMP_SIZE, SHORT_JUMP_SIZE, PatchedFunction, Relocation

__all__ = ["jump_bytes", "long_jump", "relocate", "short_jump_back"]

_I32 = (-(1 << 31), (1 << 31) - 1)


def relocate(blob: bytes, relocations: Sequence[Relocation], blob_address: int, module_base: int) -> bytes:
    """The blob with every relocation applied for blob address ``A`` and module base ``B`` (both VAs)."""
    out = bytearray(blob)
    for reloc in relocations:
        target = (module_base if reloc.target == "base" else blob_address) + reloc.value + reloc.addend
        where = blob_address + reloc.blob_offset
        if reloc.kind == "rel32":
            value = target - where
            if not _I32[0] <= value <= _I32[1]:
                raise ImageError(_too_far(reloc, value))
            struct.pack_into("<i", out, reloc.blob_offset, value)
        elif reloc.kind == "abs64":
            struct.pack_into("<Q", out, reloc.blob_offset, target & 0xFFFFFFFFFFFFFFFF)
        elif reloc.kind == "rva32":
            value = target - module_base
            if not 0 <= value <= 0xFFFFFFFF:
                raise ImageError(_too_far(reloc, value))
            struct.pack_into("<I", out, reloc.blob_offset, value)
        else:  # the manifest parser admits no other kind
            raise ImageError(f"relocation kind {reloc.kind!r} is unknown to this engine: upgrade the engine")
    return bytes(out)


def long_jump(at: int, target: int) -> bytes:
    """``E9 rel32`` placed at ``at`` jumping to ``target``; raises ImageError beyond +-2 GB."""
    value = target - (at + LONG_JUMP_SIZE)
    if not _I32[0] <= value <= _I32[1]:
        raise ImageError(f"jump from 0x{at:x} to 0x{target:x} is beyond +-2 GB: the blob was placed too far")
    return b"\xe9" + struct.pack("<i", value)


def short_jump_back() -> bytes:
    """``EB F9``: from the entry back to the long jump in the last 5 bytes of the padding."""
    return bytes((0xEB, (-(LONG_JUMP_SIZE + SHORT_JUMP_SIZE)) & 0xFF))


def jump_bytes(function: PatchedFunction, module_base: int, blob_address: int) -> Tuple[int, bytes, int, bytes]:
    """(padding VA, long jump, entry VA, short jump) redirecting ``function`` to its replacement in the blob."""
    entry = module_base + function.base_rva
    padding_at = entry - LONG_JUMP_SIZE
    return padding_at, long_jump(padding_at, blob_address + function.blob_offset), entry, short_jump_back()


def _too_far(reloc: Relocation, value: int) -> str:
    name = reloc.symbol or f"{reloc.target}+0x{reloc.value:x}"
    return (
        f"relocation {reloc.kind} at blob offset 0x{reloc.blob_offset:x} to {name} does not fit ({value:#x}): "
        "the blob must lie within 2 GB above the module"
    )
