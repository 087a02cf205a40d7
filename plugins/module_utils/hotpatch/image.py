"""PE identity and function table of a module: what the engine checks against a package's pin.

Shared by the engine (on hosts: stdlib + pefile, Python 3.8) and the patch builder (controller). Fields are the
PE/COFF ones: COFF header (Machine, TimeDateStamp), optional header (SizeOfImage, CheckSum, ImageBase), the
debug directory's CodeView RSDS record (PDB GUID/age) and the exception directory (.pdata RUNTIME_FUNCTIONs).
"""

from __future__ import annotations

import hashlib
import os
import struct
import uuid
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

from .errors import ImageError
from .package import ImagePin

try:  # pefile is present on the controller and in the engine's runtime; header_fields works without it.
    import pefile
except ImportError:  # pragma: no cover - exercised only on hosts without pefile
    pefile = None

__all__ = [
    "MACHINE_AMD64",
    "PARSED_DIRECTORIES",
    "FunctionRange",
    "HeaderFields",
    "function_ranges",
    "header_fields",
    "load_pe",
    "pin_from_bytes",
    "pin_from_file",
    "pin_matches",
]

MACHINE_AMD64 = 0x8664
_PE32PLUS = 0x20B
_PE32 = 0x10B
_RUNTIME_FUNCTION_SIZE = 12
_DEBUG_TYPE_CODEVIEW = 2

# (begin_rva, end_rva, unwind_rva): one .pdata RUNTIME_FUNCTION, RVAs as ints, end exclusive.
FunctionRange = Tuple[int, int, int]


@dataclass(frozen=True)
class HeaderFields:
    """Identity fields read from a module's headers (the first page as mapped in memory, or the file's start).

    ``machine``: COFF Machine (0x8664 for x64). ``time_date_stamp``, ``size_of_image`` (bytes), ``checksum``:
    header values as stored. ``image_base``: the preferred load address from the optional header (the loader
    does not rewrite it in the mapped header on Windows, so it equals the file's value).
    """

    machine: int
    time_date_stamp: int
    size_of_image: int
    checksum: int
    image_base: int


def header_fields(header: bytes) -> HeaderFields:
    """Parse the DOS, COFF and optional headers from ``header`` (at least the headers' bytes, e.g. 4096).

    Works on the file's first bytes and on the module's mapped first page alike (header offsets are the same).
    Raises ImageError when the bytes are not a PE header or are cut short.
    """
    if len(header) < 0x40 or header[:2] != b"MZ":
        raise ImageError("module header does not start with 'MZ': not a PE image (or the wrong address was read)")
    (e_lfanew,) = struct.unpack_from("<I", header, 0x3C)
    coff = e_lfanew + 4
    if e_lfanew > len(header) - 24 or header[e_lfanew : e_lfanew + 4] != b"PE\0\0":
        raise ImageError(f"no 'PE' signature at offset 0x{e_lfanew:x}: the image is damaged or truncated")
    machine, _sections, stamp = struct.unpack_from("<HHI", header, coff)
    (opt_size,) = struct.unpack_from("<H", header, coff + 16)
    opt = coff + 20
    if opt_size < 68 or opt + 68 > len(header):
        raise ImageError("optional header is missing or cut short: read more of the module's first page")
    (magic,) = struct.unpack_from("<H", header, opt)
    if magic == _PE32PLUS:
        (image_base,) = struct.unpack_from("<Q", header, opt + 24)
    elif magic == _PE32:
        (image_base,) = struct.unpack_from("<I", header, opt + 28)
    else:
        raise ImageError(f"optional header magic 0x{magic:x} is neither PE32 nor PE32+")
    (size_of_image,) = struct.unpack_from("<I", header, opt + 56)
    (checksum,) = struct.unpack_from("<I", header, opt + 64)
    return HeaderFields(machine, stamp, size_of_image, checksum, image_base)


def pin_matches(pin: ImagePin, fields: HeaderFields) -> Optional[str]:
    """None when ``fields`` (read from a loaded module) agree with ``pin``; otherwise the first mismatch, worded
    for the operator. The SHA-256 is not checked here (the caller hashes the file on disk when it needs to).
    """
    checks = (
        ("machine", pin.machine, fields.machine),
        ("TimeDateStamp", pin.time_date_stamp, fields.time_date_stamp),
        ("SizeOfImage", pin.size_of_image, fields.size_of_image),
        ("CheckSum", pin.checksum, fields.checksum),
    )
    for label, want, have in checks:
        if want != have:
            return (
                f"{pin.name}: {label} is 0x{have:x}, the package was built for 0x{want:x}; this is not the base "
                "image the package patches (another build or update is loaded): get a package for this build "
                "or use the cold path"
            )
    return None


# Data directories load_pe parses (PE/COFF spec order): export, import, base relocation, debug, TLS, delay
# import. Resources and the exception directory are left alone: slow on large images and not needed (.pdata is
# read raw by function_ranges).
PARSED_DIRECTORIES = (0, 1, 5, 6, 9, 13)


def load_pe(data: bytes, what: str = "image", directories: Sequence[int] = PARSED_DIRECTORIES) -> pefile.PE:
    """Parse ``data`` with pefile (headers, sections and the data ``directories``, by index); raises ImageError
    when pefile cannot make sense of it."""
    if pefile is None:  # pragma: no cover
        raise ImageError("the Python package pefile is not installed: install it in the engine's runtime")
    try:
        pe = pefile.PE(data=data, fast_load=True)
        pe.parse_data_directories(directories=list(directories))
        return pe
    except pefile.PEFormatError as exc:
        raise ImageError(f"{what} is not a PE image pefile understands: {exc.value}") from exc
    except (struct.error, ValueError, IndexError, KeyError, AttributeError, TypeError) as exc:
        raise ImageError(f"{what} is damaged: pefile failed with {type(exc).__name__}: {exc}") from exc


def pin_from_bytes(data: bytes, name: str, pe: Optional[pefile.PE] = None) -> ImagePin:
    """ImagePin of a module file's bytes; ``name`` is the file name as the loader sees it (no directory).

    Raises ImageError when the bytes are not a PE image.
    """
    fields = header_fields(data[:4096] if len(data) >= 4096 else data)
    parsed = pe if pe is not None else load_pe(data, name)
    guid, age = _codeview(parsed)
    return ImagePin(
        name=name,
        machine=fields.machine,
        time_date_stamp=fields.time_date_stamp,
        size_of_image=fields.size_of_image,
        checksum=fields.checksum,
        sha256=hashlib.sha256(data).hexdigest(),
        image_base=fields.image_base,
        pdb_guid=guid,
        pdb_age=age,
    )


def pin_from_file(path: str, name: Optional[str] = None) -> ImagePin:
    """ImagePin of the module file at ``path``; ``name`` defaults to the file's base name.

    Raises ImageError when the file cannot be read or is not a PE image.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ImageError(f"cannot read module {path}: {exc.strerror}") from exc
    return pin_from_bytes(data, name or os.path.basename(path))


def function_ranges(pe: pefile.PE) -> List[FunctionRange]:
    """Every non-empty RUNTIME_FUNCTION of the exception directory as (begin_rva, end_rva, unwind_rva), sorted.

    Read straight from the directory's bytes (12 bytes each, per the PE/COFF spec), so it works with pefile's
    fast_load too. An empty list when the image has no .pdata (x86 images, resource-only DLLs). Raises
    ImageError when the directory lies outside the image.
    """
    directory = _directory(pe, 3)
    if directory is None or not directory.VirtualAddress or not directory.Size:
        return []
    count = directory.Size // _RUNTIME_FUNCTION_SIZE
    try:
        raw = pe.get_data(directory.VirtualAddress, count * _RUNTIME_FUNCTION_SIZE)
    except pefile.PEFormatError as exc:
        raise ImageError(f"exception directory at RVA 0x{directory.VirtualAddress:x} is outside the image") from exc
    if len(raw) < count * _RUNTIME_FUNCTION_SIZE:
        raise ImageError(f"exception directory at RVA 0x{directory.VirtualAddress:x} is cut short")
    ranges = [struct.unpack_from("<III", raw, i * _RUNTIME_FUNCTION_SIZE) for i in range(count)]
    return sorted((b, e, u) for b, e, u in ranges if b < e)  # empty entries (seen in real DLLs) cover no code


def _directory(pe: pefile.PE, index: int) -> Any:
    opt = getattr(pe, "OPTIONAL_HEADER", None)
    dirs = getattr(opt, "DATA_DIRECTORY", None) or []
    return dirs[index] if index < len(dirs) else None


def _codeview(pe: pefile.PE) -> Tuple[Optional[str], Optional[int]]:
    for entry in getattr(pe, "DIRECTORY_ENTRY_DEBUG", None) or []:
        if getattr(entry.struct, "Type", None) != _DEBUG_TYPE_CODEVIEW:
            continue
        info: Any = getattr(entry, "entry", None)
        sig = getattr(info, "CvSignature", b"")
        if sig == b"RSDS":
            # RSDS record: signature, GUID (16 bytes, little-endian fields), age (uint32), PDB path.
            offset = info.get_file_offset()
            raw = bytes(pe.__data__[offset + 4 : offset + 24])
            if len(raw) == 20:
                (age,) = struct.unpack_from("<I", raw, 16)
                return str(uuid.UUID(bytes_le=raw[:16])).upper(), int(age)
    return None, None
