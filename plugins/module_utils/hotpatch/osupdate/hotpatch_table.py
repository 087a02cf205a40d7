"""The hot patch table of a PE image: which base images a Microsoft hotpatch image patches.

A hotpatch image (the code Windows loads into a running process or the kernel in place of functions of a base
image) carries, in its load configuration (IMAGE_LOAD_CONFIG_DIRECTORY, data directory 10), the field
``HotPatchTableOffset``: the RVA of an IMAGE_HOT_PATCH_INFO. pefile parses the load configuration but not the
table, so it is read here. Layouts (little-endian, every field a 32-bit ULONG) from the Windows SDK's winnt.h
(10.0.26100), with the meaning of the offsets as Signal Labs established by reversing NtManageHotPatch
(public proof of concept "Hotpatching_PoC"):

IMAGE_HOT_PATCH_INFO (at HotPatchTableOffset; 20 bytes for version 1, 24 for 2, 28 for 3)::

    +0  Version          +4  Size (bytes of the whole table)   +8  SequenceNumber
    +12 BaseImageList    (table-relative offset of BaseImageCount ULONGs, each the table-relative offset of
                          one IMAGE_HOT_PATCH_BASE)
    +16 BaseImageCount   +20 BufferOffset (version 2+)          +24 ExtraPatchSize (version 3+)

IMAGE_HOT_PATCH_BASE (28 bytes; 32 with BufferOffset, version 2+)::

    +0  SequenceNumber   +4  Flags (1 OBLIGATORY, 2 CAN_ROLL_BACK)
    +8  OriginalTimeDateStamp   +12 OriginalCheckSum   (the COFF TimeDateStamp and optional-header CheckSum of
                                                        the base image this patch applies to)
    +16 CodeIntegrityInfo  +20 CodeIntegritySize  +24 PatchTable  +28 BufferOffset

IMAGE_HOT_PATCH_HASHES (52 bytes)::

    +0 SHA256[32]  +32 SHA1[20]

Microsoft documents no more than these declarations. We read ``CodeIntegrityInfo``/``CodeIntegritySize`` as a
table-relative range of IMAGE_HOT_PATCH_HASHES records when the size is a multiple of 52 and the range lies in
the table, and report those hashes; the prediction uses only OriginalTimeDateStamp and OriginalCheckSum, the
fields the kernel matches against the loaded base image.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

from ..errors import ImageError
from ..image import load_pe

__all__ = [
    "BASE_CAN_ROLL_BACK",
    "BASE_OBLIGATORY",
    "HotPatchBase",
    "HotPatchTable",
    "read_hotpatch_table",
]

BASE_OBLIGATORY = 0x1
BASE_CAN_ROLL_BACK = 0x2
_LOAD_CONFIG = 10
_INFO_SIZES = {1: 20, 2: 24, 3: 28}
_HASHES_SIZE = 52
_MAX_BASES = 4096  # far beyond any real table; bounds the work on hostile input


@dataclass(frozen=True)
class HotPatchBase:
    """One IMAGE_HOT_PATCH_BASE: the base image identity (``time_date_stamp``, ``checksum``), ``flags``,
    ``sequence_number``, ``patch_table`` (table-relative offset) and the IMAGE_HOT_PATCH_HASHES found (hex)."""

    sequence_number: int
    flags: int
    time_date_stamp: int
    checksum: int
    patch_table: int
    sha256: Tuple[str, ...] = ()
    sha1: Tuple[str, ...] = ()

    @property
    def obligatory(self) -> bool:
        return bool(self.flags & BASE_OBLIGATORY)


@dataclass(frozen=True)
class HotPatchTable:
    """IMAGE_HOT_PATCH_INFO with its bases; ``rva`` is HotPatchTableOffset, ``size`` the table's Size (bytes)."""

    rva: int
    version: int
    size: int
    sequence_number: int
    bases: List[HotPatchBase] = field(default_factory=list)

    def base_for(self, time_date_stamp: int, checksum: int) -> Optional[HotPatchBase]:
        """The base record matching an installed image's identity, or None."""
        for base in self.bases:
            if base.time_date_stamp == time_date_stamp and base.checksum == checksum:
                return base
        return None


def read_hotpatch_table(data: bytes, what: str = "image", pe: Any = None) -> Optional[HotPatchTable]:
    """The hot patch table of the PE image ``data``; None when it has no load configuration or its
    HotPatchTableOffset is 0 (an ordinary image). Raises ImageError when the image or the table is malformed
    (offsets outside the table, a count beyond the table's size, an unknown version)."""
    parsed = pe if pe is not None else load_pe(data, what, directories=(_LOAD_CONFIG,))
    if pe is not None and not hasattr(parsed, "DIRECTORY_ENTRY_LOAD_CONFIG"):
        parsed.parse_data_directories(directories=[_LOAD_CONFIG])
    config = getattr(parsed, "DIRECTORY_ENTRY_LOAD_CONFIG", None)
    rva = getattr(getattr(config, "struct", None), "HotPatchTableOffset", 0) or 0
    if not rva:
        return None
    head = _get(parsed, rva, 20, what)
    version, size, sequence, list_offset, count = struct.unpack_from("<5I", head)
    if version not in _INFO_SIZES:
        raise ImageError(f"{what}: hot patch table at RVA 0x{rva:x} has version {version}, not 1 to 3")
    if size < _INFO_SIZES[version] or size > 16 * 1024 * 1024:
        raise ImageError(f"{what}: hot patch table at RVA 0x{rva:x} claims {size} bytes")
    table = _get(parsed, rva, size, what)
    if count > _MAX_BASES or list_offset + 4 * count > size:
        raise ImageError(f"{what}: hot patch table lists {count} bases at offset 0x{list_offset:x}, past its end")
    base_size = 32 if version >= 2 else 28
    bases = []
    for index in range(count):
        (offset,) = struct.unpack_from("<I", table, list_offset + 4 * index)
        if offset + base_size > size:
            raise ImageError(f"{what}: hot patch base {index} at offset 0x{offset:x} is past the table's end")
        seq, flags, stamp, checksum, ci_info, ci_size, patch_table = struct.unpack_from("<7I", table, offset)
        sha256, sha1 = _hashes(table, ci_info, ci_size)
        bases.append(HotPatchBase(seq, flags, stamp, checksum, patch_table, sha256, sha1))
    return HotPatchTable(rva, version, size, sequence, bases)


def _hashes(table: bytes, offset: int, size: int) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    if not size or size % _HASHES_SIZE or offset + size > len(table):
        return (), ()
    records = [table[offset + i : offset + i + _HASHES_SIZE] for i in range(0, size, _HASHES_SIZE)]
    return tuple(r[:32].hex() for r in records), tuple(r[32:52].hex() for r in records)


def _get(pe: Any, rva: int, length: int, what: str) -> bytes:
    try:
        data = bytes(pe.get_data(rva, length))
    except Exception as exc:  # pefile raises PEFormatError, or struct/Index errors on damaged images
        raise ImageError(f"{what}: hot patch table at RVA 0x{rva:x} is outside the image ({exc})") from exc
    if len(data) < length:
        raise ImageError(f"{what}: hot patch table at RVA 0x{rva:x} is cut short ({len(data)} of {length} bytes)")
    return data
