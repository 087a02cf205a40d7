"""Internal to rebootless.windows: the builder's model of one PE image (what pefile does not already give).

Everything is addressed by RVA (int, bytes from the image base). Names come from, in order of preference, the
COFF symbol table (mingw-w64), a linker /map file, and the export table; a name seen twice for different
addresses (two file-local statics) is qualified as ``name@source.c``.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import struct
from dataclasses import dataclass, field
from typing import NamedTuple

from ...module_utils.hotpatch.errors import ImageError
from ...module_utils.hotpatch.image import FunctionRange, function_ranges, load_pe, pin_from_bytes
from ...module_utils.hotpatch.package import ImagePin
from .coff import read_coff_symbols
from .deps import pefile
from .mapfile import read_map

__all__ = ["RELOC_DIR64", "Image", "Section", "Symbol", "Target", "load_image"]

_SCN_EXECUTE = 0x20000000
_SCN_WRITE = 0x80000000
_SCN_CODE = 0x00000020
_RELOC_ABSOLUTE = 0
RELOC_DIR64 = 10  # IMAGE_REL_BASED_DIR64
_MAX_STRING = 4096
# pefile parses these (import, base relocation, debug, TLS, delay import); exports are read by _exports, which is
# several times faster on images with thousands of them.
_DIRECTORIES = (1, 5, 6, 9, 13)


@dataclass(frozen=True)
class Section:
    """A section as mapped: ``rva`` and ``size`` (virtual size, bytes); ``executable`` / ``writable`` from its
    characteristics."""

    name: str
    rva: int
    size: int
    executable: bool
    writable: bool

    @property
    def end(self) -> int:
        return self.rva + self.size


@dataclass(frozen=True)
class Symbol:
    """A named function or data object: ``rva`` of its first byte, ``size`` in bytes (for functions the .pdata
    range, else up to the next symbol or the section's end), ``function`` when it lies in executable code;
    ``contribution``: an unnamed object file's part of a section, named ``.data@source.c`` (anonymous data
    inside it is addressed as an offset from it)."""

    name: str
    rva: int
    size: int
    section: Section
    function: bool
    contribution: bool = False

    @property
    def end(self) -> int:
        return self.rva + self.size


class Target(NamedTuple):
    """What an address in an image names, independent of where the linker put it.

    ``kind``: "import" (``name`` = "dll!function", dll lower-cased), "function", "data" (named object,
    ``offset`` bytes into it), "const" (anonymous read-only bytes, ``name`` = section, ``size`` bytes at ``rva``),
    "anon-code" / "anon-data" (inside a section but without a name), "outside" (in no section).
    """

    kind: str
    name: str
    offset: int
    rva: int
    writable: bool = False
    size: int = 0


@dataclass
class Image:
    """A parsed PE image. ``memory`` is the image as the loader maps it (SizeOfImage bytes, zero-filled)."""

    path: str
    name: str
    data: bytes
    pe: pefile.PE
    pin: ImagePin
    memory: bytes
    sections: list[Section]
    symbols: dict[str, Symbol]
    functions: list[FunctionRange]
    imports: dict[int, str]
    import_slots: dict[str, int]
    relocations: dict[int, int]
    names_source: str
    _starts: list[int] = field(default_factory=list, repr=False)
    _by_start: list[Symbol] = field(default_factory=list, repr=False)
    _fn_starts: list[int] = field(default_factory=list, repr=False)
    _reloc_rvas: list[int] = field(default_factory=list, repr=False)
    _sections_by_start: list[Section] = field(default_factory=list, repr=False)
    _section_starts: list[int] = field(default_factory=list, repr=False)
    _described: dict[tuple[int, int], Target] = field(default_factory=dict, repr=False)
    _contents: dict[tuple[int, int], str] = field(default_factory=dict, repr=False)
    tokens: dict[int, tuple[Target, str]] = field(default_factory=dict, repr=False)  # compare's memo, by id
    _digests: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        primary: dict[int, Symbol] = {}
        for symbol in self.symbols.values():  # insertion order: COFF, then map file, then exports
            primary.setdefault(symbol.rva, symbol)
        self._by_start = [primary[rva] for rva in sorted(primary)]
        self._starts = sorted(primary)
        self._fn_starts = [f[0] for f in self.functions]
        self._reloc_rvas = sorted(self.relocations)
        self._sections_by_start = sorted(self.sections, key=lambda s: s.rva)
        self._section_starts = [s.rva for s in self._sections_by_start]

    @property
    def primary_symbols(self) -> list[Symbol]:
        """One symbol per address (the best-sourced name), sorted by RVA: aliases are not compared twice."""
        return list(self._by_start)

    # -- reading ----------------------------------------------------------------------------------------------

    def read(self, rva: int, size: int) -> bytes:
        """``size`` bytes at ``rva`` as mapped; raises ImageError past SizeOfImage."""
        if rva < 0 or rva + size > len(self.memory):
            raise ImageError(f"{self.name}: read of {size} bytes at RVA 0x{rva:x} runs past SizeOfImage")
        return self.memory[rva : rva + size]

    def section_at(self, rva: int) -> Section | None:
        return _section_of(self._sections_by_start, self._section_starts, rva)

    def symbol_at(self, rva: int) -> Symbol | None:
        """The named symbol whose range holds ``rva`` (the one starting closest before it)."""
        index = bisect.bisect_right(self._starts, rva) - 1
        if index >= 0 and rva < max(self._by_start[index].end, self._by_start[index].rva + 1):
            return self._by_start[index]
        return None

    def function_range(self, rva: int) -> FunctionRange | None:
        """The .pdata entry whose [begin, end) holds ``rva``."""
        index = bisect.bisect_right(self._fn_starts, rva) - 1
        if index >= 0 and self.functions[index][0] <= rva < self.functions[index][1]:
            return self.functions[index]
        return None

    def relocations_in(self, begin: int, end: int) -> list[int]:
        """RVAs of base-relocation fields in [begin, end), sorted."""
        low = bisect.bisect_left(self._reloc_rvas, begin)
        high = bisect.bisect_left(self._reloc_rvas, end)
        return self._reloc_rvas[low:high]

    def pointer(self, rva: int) -> int:
        """The 64-bit value at ``rva`` turned into an RVA (absolute pointer minus the preferred image base)."""
        (value,) = struct.unpack_from("<Q", self.memory, rva)
        return int(value) - self.pin.image_base

    # -- naming -----------------------------------------------------------------------------------------------

    def describe(self, rva: int, size_hint: int = 0) -> Target:
        """Name what ``rva`` points at (see Target). ``size_hint``: operand size when known (for constants).
        Memoised: code refers to the same few targets over and over."""
        key = (rva, size_hint)
        found = self._described.get(key)
        if found is None:
            found = self._described[key] = self._describe(rva, size_hint)
        return found

    def _describe(self, rva: int, size_hint: int) -> Target:
        dll_name = self.imports.get(rva)
        if dll_name is not None:
            return Target("import", dll_name, 0, rva)
        section = self.section_at(rva)
        if section is None:
            return Target("outside", "", 0, rva)
        symbol = self.symbol_at(rva)
        if section.executable and (symbol is None or symbol.function):
            if symbol is not None:
                return Target("function", symbol.name, rva - symbol.rva, rva)
            return Target("anon-code", section.name, rva - section.rva, rva)
        if symbol is not None and (section.writable or symbol.rva == rva):
            return Target("data", symbol.name, rva - symbol.rva, rva, section.writable)
        if section.writable:
            return Target("anon-data", section.name, rva - section.rva, rva, True)
        return Target("const", section.name, 0, rva, False, self.constant_size(rva, size_hint, section))

    def contents(self, rva: int, size: int) -> str:
        """Bytes at [rva, rva + size) as hex, with each base-relocated pointer inside replaced by what it names,
        so that equal constants compare equal wherever the linker put what they point at."""
        key = (rva, size)
        found = self._contents.get(key)
        if found is None:
            found = self._contents[key] = self._contents_of(rva, size)
        return found

    def _contents_of(self, rva: int, size: int) -> str:
        raw = bytearray(self.read(rva, size))
        names: list[str] = []
        for reloc in self.relocations_in(rva - 7, rva + size):
            at = reloc - rva
            target = self.describe(self.pointer(reloc))
            names.append(f"@{at}={target.kind}:{target.name}+{target.offset}")
            raw[max(at, 0) : at + 8] = b"\0" * (min(at + 8, size) - max(at, 0))
        return raw.hex() + "".join(names)

    def symbol_digest(self, name: str) -> str:
        """SHA-256 (hex) of a named object's normalised contents (see ``contents``): equal across two builds
        exactly when the object holds the same bytes and points at the same things."""
        found = self._digests.get(name)
        if found is None:
            symbol = self.symbols[name]
            found = self._digests[name] = hashlib.sha256(self.contents(symbol.rva, symbol.size).encode()).hexdigest()
        return found

    def constant_size(self, rva: int, size_hint: int, section: Section) -> int:
        """Length of an anonymous read-only constant: a printable NUL-terminated string (NUL included) when it
        looks like one, else ``size_hint`` or 16 bytes, never past the section's end or the next symbol."""
        limit = section.end
        index = bisect.bisect_right(self._starts, rva)
        if index < len(self._starts):
            limit = min(limit, self._starts[index])
        window = self.memory[rva : min(limit, rva + _MAX_STRING)]
        nul = window.find(b"\0")
        if nul > 0 and all(byte >= 0x20 or byte in (9, 10, 13) for byte in window[:nul]):
            return nul + 1
        return max(1, min(size_hint or 16, limit - rva))


def load_image(path: str, map_path: str | None = None, name: str | None = None) -> Image:
    """Parse the PE file at ``path`` (optionally with its /map file). Raises ImageError when the file cannot be
    read or pefile does not understand it."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ImageError(f"cannot read module {path}: {exc.strerror}") from exc
    module = name or os.path.basename(path)
    pe = load_pe(data, module, _DIRECTORIES)
    try:
        return _build(path, module, data, pe, map_path)
    except (pefile.PEFormatError, struct.error, ValueError, IndexError, AttributeError, TypeError) as exc:
        raise ImageError(f"{module}: cannot model this image ({type(exc).__name__}: {exc})") from exc


def _build(path: str, module: str, data: bytes, pe: pefile.PE, map_path: str | None) -> Image:
    pin = pin_from_bytes(data, module, pe)
    memory = _map(pe, data, pin.size_of_image)
    sections = [
        Section(
            s.Name.rstrip(b"\0").decode("ascii", "replace"),
            s.VirtualAddress,
            max(s.Misc_VirtualSize, 0) or s.SizeOfRawData,
            bool(s.Characteristics & (_SCN_EXECUTE | _SCN_CODE)),
            bool(s.Characteristics & _SCN_WRITE),
        )
        for s in pe.sections
    ]
    functions = function_ranges(pe)
    imports, slots = _imports(pe, pin.image_base)
    relocations = _relocations(pe)
    raw_names, source, edges = _names(pe, data, memory, sections, map_path, pin.image_base)
    symbols = _symbols(raw_names, sections, functions, _boundaries(pe) + edges)
    return Image(path, module, data, pe, pin, memory, sections, symbols, functions, imports, slots, relocations, source)


def _map(pe: pefile.PE, data: bytes, size_of_image: int) -> bytes:
    """The image as the loader maps it: headers, then each section's raw data at its RVA, zero-filled."""
    memory = bytearray(size_of_image)
    headers = min(pe.OPTIONAL_HEADER.SizeOfHeaders, len(data), size_of_image)
    memory[:headers] = data[:headers]
    for section in pe.sections:
        start = section.PointerToRawData
        size = min(section.SizeOfRawData, section.Misc_VirtualSize or section.SizeOfRawData)
        size = max(0, min(size, len(data) - start, size_of_image - section.VirtualAddress))
        memory[section.VirtualAddress : section.VirtualAddress + size] = data[start : start + size]
    return bytes(memory)


def _exports(pe: pefile.PE, memory: bytes) -> list[tuple[str, int]]:
    """(name, RVA) of every named export that is not a forwarder (PE/COFF spec, "The .edata Section")."""
    directory = pe.OPTIONAL_HEADER.DATA_DIRECTORY[0]
    start, size = directory.VirtualAddress, directory.Size
    if not start or start + 40 > len(memory):
        return []
    count_functions, count_names, functions, names, ordinals = struct.unpack_from("<IIIII", memory, start + 20)
    if max(functions + 4 * count_functions, names + 4 * count_names, ordinals + 2 * count_names) > len(memory):
        raise ImageError(f"export directory at RVA 0x{start:x} points past SizeOfImage")
    found: list[tuple[str, int]] = []
    for index in range(count_names):
        (name_rva,) = struct.unpack_from("<I", memory, names + 4 * index)
        (ordinal,) = struct.unpack_from("<H", memory, ordinals + 2 * index)
        if ordinal >= count_functions or name_rva >= len(memory):
            continue
        (rva,) = struct.unpack_from("<I", memory, functions + 4 * ordinal)
        if start <= rva < start + size:
            continue  # a forwarder ("OTHER.dll.Name"), not code in this image
        end = memory.find(b"\0", name_rva, name_rva + 4096)
        found.append((memory[name_rva : end if end >= 0 else name_rva].decode("ascii", "replace"), rva))
    return found


def _imports(pe: pefile.PE, image_base: int) -> tuple[dict[int, str], dict[str, int]]:
    by_slot: dict[int, str] = {}
    slots: dict[str, int] = {}
    for attr in ("DIRECTORY_ENTRY_IMPORT", "DIRECTORY_ENTRY_DELAY_IMPORT"):
        for entry in getattr(pe, attr, None) or []:
            dll = entry.dll.decode("ascii", "replace").lower() if entry.dll else "?"
            for imp in entry.imports:
                label = imp.name.decode("ascii", "replace") if imp.name else f"#{imp.ordinal}"
                key = f"{dll}!{label}"
                rva = imp.address - image_base
                by_slot[rva] = key
                slots.setdefault(key, rva)
    return by_slot, slots


def _relocations(pe: pefile.PE) -> dict[int, int]:
    found: dict[int, int] = {}
    for block in getattr(pe, "DIRECTORY_ENTRY_BASERELOC", None) or []:
        for entry in block.entries:
            if entry.type != _RELOC_ABSOLUTE:
                found[entry.rva] = entry.type
    return found


def _names(
    pe: pefile.PE, data: bytes, memory: bytes, sections: list[Section], map_path: str | None, image_base: int
) -> tuple[list[tuple[str, int, str]], str, list[int]]:
    """(name, rva, source file) triples, best source first; and a word saying where names came from. A source
    starting with NUL marks a COFF symbol whose type is not function (data placed in code, e.g. __CTOR_LIST__);
    one starting with \x01 marks an object file's contribution to a writable section, followed by its length.
    Third: the start and end RVAs of every object file's contribution to any section (sizes end there)."""
    names: list[tuple[str, int, str]] = []
    sources: list[str] = []
    header = pe.FILE_HEADER
    coff = read_coff_symbols(data, header.PointerToSymbolTable, header.NumberOfSymbols)
    contributions: list[tuple[str, int, str]] = []
    edges: list[int] = []  # where each object file's part of a section starts and ends
    seen: dict[str, int] = {}
    for symbol in coff:
        if symbol.section <= len(sections):
            rva = sections[symbol.section - 1].rva + symbol.value
            if symbol.contribution:
                edges += [rva, rva + symbol.length]
                if sections[symbol.section - 1].writable and symbol.length:  # read-only: compared by content
                    label = f"{symbol.name}@{symbol.source}"
                    seen[label] = seen.get(label, 0) + 1
                    contributions.append((f"{label}#{seen[label]}", rva, f"\1{symbol.length}"))
            else:
                names.append((symbol.name, rva, symbol.source if symbol.function else "\0" + symbol.source))
    if coff:
        sources.append("COFF symbol table")
    if map_path:
        names.extend((name, rva, "") for name, rva in sorted(read_map(map_path, image_base).items()))
        sources.append("map file")
    exports = _exports(pe, memory)
    if exports:
        names.extend((name, rva, "") for name, rva in exports)
        sources.append("exports")
    names.extend(contributions)  # last: a real name at the same address is preferred
    return names, " + ".join(sources) or "none", edges


def _symbols(
    raw: list[tuple[str, int, str]], sections: list[Section], functions: list[FunctionRange], boundaries: list[int]
) -> dict[str, Symbol]:
    """One Symbol per name; the first name seen for an address wins, later aliases of it are kept too. A symbol
    without a known size ends at the next symbol, function or ``boundaries`` entry (linker-made structures)."""
    addresses: dict[str, set[int]] = {}
    for name, rva, _source in raw:
        addresses.setdefault(name, set()).add(rva)
    pdata_end = {begin: end for begin, end, _unwind in functions}
    chosen: dict[str, tuple[int, Section, bool, int]] = {}
    by_start = sorted(sections, key=lambda s: s.rva)
    section_starts = [s.rva for s in by_start]
    for name, rva, source in raw:
        section = _section_of(by_start, section_starts, rva)
        if section is None:
            continue
        not_code = source.startswith("\0") and rva not in pdata_end
        contribution = source.startswith("\1")
        length = int(source[1:]) if contribution else 0
        source = "" if contribution else source.lstrip("\0")
        key = name if len(addresses[name]) == 1 else f"{name}@{source or hex(rva)}"
        chosen.setdefault(key, (rva, section, section.executable and not not_code, length))
    starts_by_section: dict[str, list[int]] = {}
    for rva, section, _code, _contribution in chosen.values():
        starts_by_section.setdefault(section.name + hex(section.rva), []).append(rva)
    for begin, _end, _unwind in functions:
        section = _section_of(by_start, section_starts, begin)
        if section is not None:
            starts_by_section.setdefault(section.name + hex(section.rva), []).append(begin)
    for rva in boundaries:
        section = _section_of(by_start, section_starts, rva)
        if section is not None:
            starts_by_section.setdefault(section.name + hex(section.rva), []).append(rva)
    for starts in starts_by_section.values():
        starts.sort()
    symbols: dict[str, Symbol] = {}
    for name, (rva, section, code, length) in chosen.items():
        starts = starts_by_section[section.name + hex(section.rva)]
        index = bisect.bisect_right(starts, rva)
        following = starts[index] if index < len(starts) else section.end
        if code and rva in pdata_end:
            size = pdata_end[rva] - rva
        elif length:
            size = length
        else:
            size = max(1, min(following, section.end) - rva)
        symbols[name] = Symbol(name, rva, size, section, code, bool(length))
    _name_anonymous(symbols, sections, functions)
    return symbols


def _boundaries(pe: pefile.PE) -> list[int]:
    """Starts and ends of what the linker put among the data: every data directory (imports, exports, debug
    directory, load config, ...) and each debug record (the CodeView record holds a per-build GUID)."""
    found: list[int] = []
    for directory in pe.OPTIONAL_HEADER.DATA_DIRECTORY:
        if directory.VirtualAddress:
            found += [directory.VirtualAddress, directory.VirtualAddress + directory.Size]
    for entry in getattr(pe, "DIRECTORY_ENTRY_DEBUG", None) or []:
        if entry.struct.AddressOfRawData:
            found += [entry.struct.AddressOfRawData, entry.struct.AddressOfRawData + entry.struct.SizeOfData]
    return found


def _section_of(by_start: list[Section], starts: list[int], rva: int) -> Section | None:
    index = bisect.bisect_right(starts, rva) - 1
    return by_start[index] if index >= 0 and rva < by_start[index].end else None


def _name_anonymous(symbols: dict[str, Symbol], sections: list[Section], functions: list[FunctionRange]) -> None:
    """Give every .pdata function no name covers a name that survives relinking: ``<previous name>~<k>``, the
    k-th unnamed function after the closest named function before it (static functions of libraries linked
    without their local symbols)."""
    by_start = sorted(sections, key=lambda s: s.rva)
    section_starts = [s.rva for s in by_start]
    named = sorted((s.rva, s.end, s.name) for s in symbols.values() if s.function)
    starts = [item[0] for item in named]
    counters: dict[str, int] = {}
    for begin, end, _unwind in functions:
        index = bisect.bisect_right(starts, begin) - 1
        if index >= 0 and named[index][0] <= begin < named[index][1]:
            continue  # part of a named function (a second .pdata entry of it)
        section = _section_of(by_start, section_starts, begin)
        if section is None:
            continue
        anchor = named[index][2] if index >= 0 and named[index][0] >= section.rva else section.name
        counters[anchor] = counters.get(anchor, 0) + 1
        name = f"{anchor}~{counters[anchor]}"
        symbols.setdefault(name, Symbol(name, begin, end - begin, section, True))
