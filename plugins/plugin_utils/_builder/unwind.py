"""Internal to rebootless.windows: x64 UNWIND_INFO records and the handler data the builder knows how to move.

Layout per the PE/COFF spec / x64 exception handling docs: 4 header bytes (version:3 flags:5, prologue size,
count of codes, frame register:4 offset:4), ``count`` 2-byte unwind codes padded to an even count, then either a
chained RUNTIME_FUNCTION (flag UNW_FLAG_CHAININFO) or a handler RVA followed by language-specific handler data
(flags UNW_FLAG_EHANDLER / UNW_FLAG_UHANDLER).

Handler data the builder understands:
- gcc (``__gxx_personality_seh0``, ``__gcc_personality_seh0``, ``_GCC_specific_handler``): the DWARF-style LSDA
  itself. Call-site offsets are relative to the function start and move with it; type-table entries are pointers
  (absolute or pc-relative, possibly indirect) to typeinfo objects and get relocated.
- ``__C_specific_handler``: a scope table (count, then begin/end/handler/target RVAs per scope).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .model import Image

__all__ = ["Field", "UnwindRecord", "read_unwind"]

_FLAG_EHANDLER = 1
_FLAG_UHANDLER = 2
_FLAG_CHAININFO = 4
_GCC_HANDLERS = ("__gxx_personality_seh0", "__gcc_personality_seh0", "_GCC_specific_handler", "__gnu_personality_seh0")
_C_HANDLERS = ("__C_specific_handler",)
_DW_OMIT = 0xFF


@dataclass(frozen=True)
class Field:
    """A field inside a copied record that names an address: ``offset`` from the record's start, ``kind``
    "rva32" / "rel32" / "abs64", ``rva``: the address it names in its image."""

    offset: int
    kind: str
    rva: int


@dataclass
class UnwindRecord:
    """One UNWIND_INFO at ``rva`` of ``size`` bytes (handler data included) with the ``fields`` to relocate.

    ``chained``: (begin, end, unwind) RVAs of the chained parent entry, if any; ``handler``: name of the
    exception handler (or ""); ``problem``: why the record cannot be carried, worded for a human."""

    rva: int
    size: int
    fields: list[Field] = field(default_factory=list)
    chained: tuple[int, int, int] | None = None
    handler: str = ""
    problem: str = ""


def read_unwind(image: Image, rva: int, function_begin: int) -> UnwindRecord:
    """Parse the UNWIND_INFO at ``rva`` of the function starting at ``function_begin`` (RVAs)."""
    header = image.read(rva, 4)
    flags = header[0] >> 3
    codes = header[2]
    size = 4 + 2 * (codes + (codes & 1))
    record = UnwindRecord(rva, size)
    if flags & _FLAG_CHAININFO:
        begin, end, unwind = struct.unpack_from("<III", image.read(rva + size, 12))
        record.chained = (begin, end, unwind)
        record.fields += [Field(size, "rva32", begin), Field(size + 4, "rva32", end), Field(size + 8, "rva32", unwind)]
        record.size = size + 12
        return record
    if not flags & (_FLAG_EHANDLER | _FLAG_UHANDLER):
        return record
    (handler_rva,) = struct.unpack_from("<I", image.read(rva + size, 4))
    target = image.describe(handler_rva)
    record.handler = target.name if target.kind == "function" else f"RVA 0x{handler_rva:x}"
    record.fields.append(Field(size, "rva32", handler_rva))
    data_at = size + 4
    base_name = record.handler.split("@", 1)[0]
    if base_name in _GCC_HANDLERS:
        _gcc_lsda(image, record, data_at)
    elif base_name in _C_HANDLERS:
        _scope_table(image, record, data_at)
    else:
        record.size = data_at
        record.problem = (
            f"exception handler {record.handler} has handler data in a format the builder does not know, so it "
            "cannot be moved with the function: use the cold path"
        )
    return record


def _scope_table(image: Image, record: UnwindRecord, at: int) -> None:
    (count,) = struct.unpack_from("<I", image.read(record.rva + at, 4))
    if count > 4096:
        record.problem = f"scope table of {count} entries is implausible: the image is damaged"
        return
    raw = image.read(record.rva + at + 4, 16 * count)
    for index in range(count):
        values = struct.unpack_from("<IIII", raw, 16 * index)
        for slot, value in enumerate(values):
            if value > 1:  # handler 1 is EXCEPTION_EXECUTE_HANDLER, target 0 means none
                record.fields.append(Field(at + 4 + 16 * index + 4 * slot, "rva32", value))
    record.size = at + 4 + 16 * count


class _Reader:
    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos

    def byte(self) -> int:
        value = self.data[self.pos]
        self.pos += 1
        return value

    def uleb(self) -> int:
        result = shift = 0
        while True:
            byte = self.byte()
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result

    def sleb(self) -> int:
        result = shift = 0
        while True:
            byte = self.byte()
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                if byte & 0x40:
                    result -= 1 << shift
                return result

    def encoded(self, encoding: int) -> int:
        low = encoding & 0x0F
        if low == 0x01:
            return self.uleb()
        if low == 0x09:
            return self.sleb()
        width, fmt = {
            0x00: (8, "<Q"),
            0x02: (2, "<H"),
            0x03: (4, "<I"),
            0x04: (8, "<Q"),
            0x0B: (4, "<i"),
            0x0C: (8, "<q"),
        }[low]
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += width
        return int(value)


def _encoded_size(encoding: int) -> int:
    return {0x00: 8, 0x02: 2, 0x03: 4, 0x04: 8, 0x0A: 2, 0x0B: 4, 0x0C: 8}.get(encoding & 0x0F, 0)


def _gcc_lsda(image: Image, record: UnwindRecord, at: int) -> None:
    """Measure the LSDA at ``record.rva + at`` and list its type-table fields (see module docstring)."""
    start = record.rva + at
    section = image.section_at(start)
    if section is None:
        record.problem = "handler data lies outside every section: the image is damaged"
        return
    window = image.read(start, min(section.end - start, 1 << 16))
    reader = _Reader(window, 0)
    try:
        lpstart = reader.byte()
        if lpstart != _DW_OMIT:
            record.problem = "LSDA names a landing-pad base (LPStart); the builder only moves function-relative pads"
            return
        ttype_enc = reader.byte()
        ttype_base = None
        if ttype_enc != _DW_OMIT:
            offset = reader.uleb()
            ttype_base = reader.pos + offset
        cs_enc = reader.byte()
        cs_len = reader.uleb()
        cs_end = reader.pos + cs_len
        actions: list[int] = []
        while reader.pos < cs_end:
            for _field in range(3):
                reader.encoded(cs_enc)
            action = reader.uleb()
            if action:
                actions.append(action)
        end = cs_end
        filters: set[int] = set()
        for action in actions:
            pos = cs_end + action - 1
            for _hop in range(256):
                reader.pos = pos
                type_filter = reader.sleb()
                next_at = reader.pos
                displacement = reader.sleb()
                end = max(end, reader.pos)
                if type_filter < 0:
                    record.problem = "LSDA uses an exception specification (throw(...)): not supported by the builder"
                    return
                if type_filter > 0:
                    filters.add(type_filter)
                if displacement == 0:
                    break
                pos = next_at + displacement
    except (IndexError, KeyError, struct.error):
        record.problem = "LSDA cannot be parsed (damaged or in an unknown encoding): use the cold path"
        return
    if ttype_base is not None:
        width = _encoded_size(ttype_enc)
        if not width or (ttype_enc & 0x70) not in (0x00, 0x10) or ttype_enc & 0x0F not in (0x00, 0x0B, 0x03):
            record.problem = f"LSDA type table encoding 0x{ttype_enc:02x} is not one the builder relocates"
            return
        end = max(end, ttype_base)
        for type_filter in sorted(filters):
            entry = ttype_base - type_filter * width
            raw = image.read(start + entry, width)
            value = int.from_bytes(raw, "little", signed=(ttype_enc & 0x0F) == 0x0B)
            if value == 0:
                continue  # catch (...)
            if ttype_enc & 0x70 == 0x10:  # pc-relative: the field names start + entry + value
                record.fields.append(Field(at + entry, "rel32", start + entry + value))
            elif width == 8:
                record.fields.append(Field(at + entry, "abs64", value - image.pin.image_base))
            else:
                record.problem = f"LSDA type table encoding 0x{ttype_enc:02x} is not one the builder relocates"
                return
    record.size = at + end
