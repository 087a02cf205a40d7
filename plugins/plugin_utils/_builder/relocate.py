"""Internal to rebootless.windows: lay the selected functions out in one blob and bind every reference.

Blob layout (offsets in bytes, each piece 16-byte aligned, padding CC): changed functions, new functions, jump
tables and read-only constants they need (in the order first referenced), UNWIND_INFO copies, then the
RUNTIME_FUNCTION array. A reference from blob to blob is written directly (the distance is fixed); a reference
to the base image becomes a ``Relocation`` the engine resolves at apply time (package.py's semantics):

- unchanged function or data object -> its base RVA, found by name (plus the same offset into it);
- import -> the base image's IAT slot for the same dll!name (refused when the base does not import it);
- changed or new function, jump table, carried constant -> its blob offset;
- exception handlers named in UNWIND_INFO -> the base image's handler, by name.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ...module_utils.hotpatch.package import Refusal, Relocation, UnwindTable
from .compare import JumpTable, Reference
from .model import RELOC_DIR64, Image, Symbol, Target
from .select import Selection
from .unwind import read_unwind

__all__ = ["Blob", "relocate"]

_ALIGN = 16
_FILL = b"\xcc"


@dataclass
class Blob:
    """The relocatable code blob and everything the manifest says about it.

    ``offsets`` / ``sizes``: patched function name -> blob offset / length; ``address_taken``: new functions
    whose address the patch takes (CFG call targets); ``refusals``: references that could not be bound."""

    code: bytearray = field(default_factory=bytearray)
    offsets: dict[str, int] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    relocations: list[Relocation] = field(default_factory=list)
    unwind: UnwindTable | None = None
    address_taken: set[str] = field(default_factory=set)
    refusals: list[Refusal] = field(default_factory=list)


def relocate(base: Image, patched: Image, selection: Selection) -> Blob:
    """Build the blob for ``selection`` (see module docstring); unbindable references become refusals."""
    return _Relocator(base, patched, selection).run()


class _Relocator:
    def __init__(self, base: Image, patched: Image, selection: Selection) -> None:
        self.base = base
        self.patched = patched
        self.selection = selection
        self.blob = Blob()
        self.new_names = {symbol.name for symbol in selection.new}
        self.carried: dict[tuple[int, int], int] = {}
        self.tables: dict[int, int] = {}
        self.unwind_copies: dict[int, int] = {}
        self.veneers: dict[tuple[str, int], int] = {}

    def run(self) -> Blob:
        functions = self.selection.carried()
        for symbol in functions:
            self._place(symbol)
        for symbol in functions:
            for ref in self.selection.bodies[symbol.name].references:
                self._bind_reference(symbol, ref)
        self._carry_unwind(functions)
        self.blob.relocations.sort(key=lambda r: r.blob_offset)
        return self.blob

    # -- layout -----------------------------------------------------------------------------------------------

    def _append(self, data: bytes, align: int = _ALIGN) -> int:
        code = self.blob.code
        code.extend(_FILL * (-len(code) % align))
        offset = len(code)
        code.extend(data)
        return offset

    def _place(self, symbol: Symbol) -> None:
        """Copy the body; a short (rel8) jump that leaves it gets a veneer (E9 rel32) right after the body."""
        body = self.selection.bodies[symbol.name]
        self.blob.offsets[symbol.name] = self._append(body.code)
        self.blob.sizes[symbol.name] = len(body.code)
        for ref in body.references:
            if ref.size == 1:
                self.veneers[(symbol.name, ref.offset)] = self._append(b"\xe9\0\0\0\0", 1)

    def _write(self, offset: int, fmt: str, value: int) -> None:
        struct.pack_into(fmt, self.blob.code, offset, value)

    # -- references from code ---------------------------------------------------------------------------------

    def _bind_reference(self, symbol: Symbol, ref: Reference) -> None:
        origin = self.blob.offsets[symbol.name]
        at = origin + ref.offset
        if ref.table is not None:
            where, value, label = "blob", self._carry_table(symbol, ref.table), f"{symbol.name} jump table"
        elif ref.target.kind == "self":
            where, value, label = "blob", origin + ref.target.offset, f"{symbol.name}+0x{ref.target.offset:x}"
        else:
            bound = self._bind(ref.target, symbol.name)
            if bound is None:
                return
            where, value, label = bound
        if ref.target.kind == "function" and ref.target.name in self.new_names and not ref.call:
            self.blob.address_taken.add(ref.target.name)
        if ref.size == 1:
            veneer = self.veneers[(symbol.name, ref.offset)]
            distance = veneer - (origin + ref.next_ip)
            if not -128 <= distance <= 127:
                self._refuse(
                    symbol.name, f"has a short jump at +0x{ref.instr_at:x} too far from its veneer; use the cold path"
                )
                return
            self._write(at, "<b", distance)
            origin, at = veneer, veneer + 1
            ref = Reference(1, 4, "rel", 5, ref.target, ref.call, None, 0)
        if ref.kind == "abs64":
            self._write(at, "<Q", 0)
            self.blob.relocations.append(Relocation(at, "abs64", where, value, 0, label))
        elif where == "blob":
            self._write(at, "<i", value - (origin + ref.next_ip))
        else:
            self._write(at, "<i", 0)
            self.blob.relocations.append(Relocation(at, "rel32", "base", value, -(ref.next_ip - ref.offset), label))

    def _bind(self, target: Target, user: str) -> tuple[str, int, str] | None:
        """(where, value, label) for a target of the patched image, or None after recording a refusal."""
        kind, name, offset = target.kind, target.name, target.offset
        label = name if not offset else f"{name}+0x{offset:x}"
        if kind == "function":
            if name in self.blob.offsets:
                return "blob", self.blob.offsets[name] + offset, label
            old = self.base.symbols.get(name)
            if old is not None and old.function:
                return "base", old.rva + offset, label
            return self._refuse(user, f"references function {name}, which neither the base image nor the patch holds")
        if kind == "import":
            slot = self.base.import_slots.get(name)
            if slot is None:
                return self._refuse(
                    user,
                    f"calls {name}, which the base image does not import; a running process cannot gain imports: "
                    "make the base build import it too (or resolve it with GetProcAddress) or use the cold path",
                )
            return "base", slot, name
        if kind == "data":
            old = self.base.symbols.get(name)
            symbol = self.patched.symbols[name]
            same = (
                target.writable
                or symbol.section.executable
                or (old is not None and self.base.symbol_digest(name) == self.patched.symbol_digest(name))
            )
            if old is not None and not old.function and same:
                return "base", old.rva + offset, label
            if target.writable:
                return self._refuse(user, f"uses new writable data {name}, which running processes do not have")
            # new or changed read-only data: the patch carries its own copy
            return "blob", self._carry(symbol.rva, symbol.size) + offset, label
        if kind == "const":
            return "blob", self._carry(target.rva, target.size), f"constant at patched RVA 0x{target.rva:x}"
        return self._refuse(
            user,
            f"has a reference to RVA 0x{target.rva:x} ({kind} {name}+0x{offset:x}) that names no symbol the builder "
            "can bind in the base image; pass the linker /map file or build with symbols, or use the cold path",
        )

    def _refuse(self, user: str, reason: str) -> tuple[str, int, str] | None:
        """Record a refusal for ``user`` (once); returns None so binders can ``return self._refuse(...)``."""
        refusal = Refusal(user, f"{user} {reason}")
        if refusal not in self.blob.refusals:
            self.blob.refusals.append(refusal)
        return None

    def _carry(self, rva: int, size: int) -> int:
        """Copy read-only bytes of the patched image into the blob once; pointers inside get abs64 relocations."""
        key = (rva, size)
        if key in self.carried:
            return self.carried[key]
        offset = self._append(self.patched.read(rva, size))
        self.carried[key] = offset
        for reloc in self.patched.relocations_in(rva, rva + size):
            if self.patched.relocations[reloc] != RELOC_DIR64 or reloc + 8 > rva + size:
                self._refuse(
                    f"constant at RVA 0x{rva:x}",
                    f"holds a base relocation of type {self.patched.relocations[reloc]} at RVA 0x{reloc:x} the "
                    "builder cannot move; use the cold path",
                )
                continue
            at = offset + reloc - rva
            target = self.patched.describe(self.patched.pointer(reloc))
            bound = self._bind(target, f"constant at RVA 0x{rva:x}")
            if target.kind == "function" and target.name in self.new_names:
                self.blob.address_taken.add(target.name)  # e.g. a new function in a carried table of pointers
            if bound is not None:
                self._write(at, "<Q", 0)
                self.blob.relocations.append(Relocation(at, "abs64", bound[0], bound[1], 0, bound[2]))
        return offset

    def _carry_table(self, symbol: Symbol, table: JumpTable) -> int:
        """Copy a self-relative jump table; its entries point into the new body, so they are fixed now."""
        if table.rva in self.tables:
            return self.tables[table.rva]
        origin = self.blob.offsets[symbol.name]
        offset = self._append(b"\0" * (4 * len(table.entries)))
        for index, entry in enumerate(table.entries):
            self._write(offset + 4 * index, "<i", origin + entry - offset)
        self.tables[table.rva] = offset
        return offset

    # -- unwind information -----------------------------------------------------------------------------------

    def _carry_unwind(self, functions: list[Symbol]) -> None:
        entries: list[tuple[int, int, int]] = []
        for symbol in functions:
            origin = self.blob.offsets[symbol.name]
            for begin, end, unwind in self.patched.functions:
                if symbol.rva <= begin < symbol.end:
                    copy = self._copy_unwind(symbol, unwind)
                    if copy is not None:
                        entries.append((origin + begin - symbol.rva, origin + min(end, symbol.end) - symbol.rva, copy))
        if not entries:
            return
        table = self._append(b"\0" * (12 * len(entries)), 4)
        for index, (begin, end, unwind) in enumerate(entries):
            for slot, value in enumerate((begin, end, unwind)):
                at = table + 12 * index + 4 * slot
                self.blob.relocations.append(Relocation(at, "rva32", "blob", value, 0, "RUNTIME_FUNCTION"))
        self.blob.unwind = UnwindTable(table, len(entries))

    def _copy_unwind(self, symbol: Symbol, rva: int) -> int | None:
        if rva in self.unwind_copies:
            return self.unwind_copies[rva]
        record = read_unwind(self.patched, rva, symbol.rva)
        if record.problem:
            self._refuse(symbol.name, f"cannot carry its unwind information: {record.problem}")
            return None
        offset = self._append(self.patched.read(rva, record.size), 4)
        self.unwind_copies[rva] = offset
        for item in record.fields:
            at = offset + item.offset
            chain_link = record.chained is not None and item is record.fields[-1]
            bound = self._bind_unwind_field(symbol, item.rva, chain_link)
            if bound is None:
                continue
            where, value, label = bound
            width = 8 if item.kind == "abs64" else 4
            self.blob.code[at : at + width] = b"\0" * width
            self.blob.relocations.append(Relocation(at, item.kind, where, value, 0, label))
        return offset

    def _bind_unwind_field(self, symbol: Symbol, rva: int, is_unwind_rva: bool) -> tuple[str, int, str] | None:
        for name, offset in self.blob.offsets.items():
            carried = self.patched.symbols[name]
            if carried.rva <= rva < carried.end or (rva == carried.end and not is_unwind_rva):
                return "blob", offset + rva - carried.rva, f"{name}+0x{rva - carried.rva:x}"
        if is_unwind_rva:
            copy = self._copy_unwind(symbol, rva)
            return None if copy is None else ("blob", copy, "chained UNWIND_INFO")
        return self._bind(self.patched.describe(rva), symbol.name)
