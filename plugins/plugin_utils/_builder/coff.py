"""Internal to rebootless.windows: the COFF symbol table a PE image may keep (mingw-w64 links keep one).

Layout per the PE/COFF spec section "COFF Symbol Table": ``NumberOfSymbols`` records of 18 bytes at
``PointerToSymbolTable`` (a file offset), each followed by ``NumberOfAuxSymbols`` auxiliary records of the same
size; right after the table comes the string table (a uint32 total size, itself included, then NUL-terminated
names) that long names point into when a record's first four name bytes are zero.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ...module_utils.hotpatch.errors import ImageError

__all__ = ["CoffSymbol", "read_coff_symbols"]

_RECORD = 18
_CLASS_EXTERNAL = 2
_CLASS_STATIC = 3
_CLASS_FILE = 103
_TYPE_FUNCTION = 0x20  # DTYPE_FUNCTION << 4 in the Type field's high nibble


@dataclass(frozen=True)
class CoffSymbol:
    """One named symbol: ``section`` is the 1-based section number, ``value`` the offset inside that section
    (bytes); ``function`` tells whether the Type field says function; ``external`` global vs file-local;
    ``source`` the name of the last .file record before it (for telling apart same-named statics);
    ``contribution``: a section-definition record, marking where one object file's part of a section starts,
    ``length`` bytes long (from its auxiliary record)."""

    name: str
    section: int
    value: int
    function: bool
    external: bool
    source: str
    contribution: bool = False
    length: int = 0


def read_coff_symbols(data: bytes, pointer: int, count: int) -> list[CoffSymbol]:
    """Named external and static symbols of the table at file offset ``pointer`` with ``count`` records.

    Section definitions (static records with an auxiliary record) come back as ``contribution`` symbols;
    undefined, absolute and debug symbols are left out. An empty list when the image keeps no table. Raises ImageError when the table or its string
    table lies outside the file.
    """
    if not pointer or not count:
        return []
    end = pointer + count * _RECORD
    if end + 4 > len(data):
        raise ImageError(
            f"COFF symbol table ({count} records at file offset 0x{pointer:x}) runs past the end of the file"
        )
    (strings_size,) = struct.unpack_from("<I", data, end)
    strings = data[end : end + strings_size] if strings_size >= 4 else b""
    symbols: list[CoffSymbol] = []
    source = ""
    index = 0
    while index < count:
        offset = pointer + index * _RECORD
        raw_name, value, section, type_, storage, aux = struct.unpack_from("<8sIhHBB", data, offset)
        index += 1 + aux
        if storage == _CLASS_FILE:
            aux_bytes = data[offset + _RECORD : offset + _RECORD * (1 + aux)]
            source = aux_bytes.split(b"\0", 1)[0].decode("utf-8", "replace")
            continue
        if storage not in (_CLASS_EXTERNAL, _CLASS_STATIC) or section <= 0:
            continue
        function = (type_ & 0xF0) == _TYPE_FUNCTION
        name = _name(raw_name, strings)
        contribution = storage == _CLASS_STATIC and bool(aux) and not function and name.startswith(".")
        if storage == _CLASS_STATIC and not aux and not function and name.startswith("."):
            continue  # a section-name label (".text", ".rdata$zzz") of import stubs: names no object
        if name:
            length = struct.unpack_from("<I", data, offset + _RECORD)[0] if contribution else 0
            symbols.append(
                CoffSymbol(name, section, value, function, storage == _CLASS_EXTERNAL, source, contribution, length)
            )
    return symbols


def _name(raw: bytes, strings: bytes) -> str:
    if raw[:4] == b"\0\0\0\0":
        (offset,) = struct.unpack_from("<I", raw, 4)
        if offset < 4 or offset >= len(strings):
            return ""
        end = strings.find(b"\0", offset)
        raw = strings[offset : end if end >= 0 else len(strings)]
    else:
        raw = raw.split(b"\0", 1)[0]
    return raw.decode("utf-8", "replace")
