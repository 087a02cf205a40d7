"""Internal to rebootless.windows: decide what goes into the patch and what must be refused.

``compare`` finds the changed functions; ``select`` adds the new ones, checks every changed function's entry in
the BASE image (``check_entry``) and refuses what a running process cannot take: changed layout or initial
value of writable data, new writable data, changed TLS or static constructors, another machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...module_utils.hotpatch.package import LONG_JUMP_SIZE, PADDING_BYTES, SHORT_JUMP_SIZE, Refusal
from .compare import Body, decode_body, same_body
from .correlate import Correlation
from .deps import iced_x86
from .model import Image, Symbol

__all__ = ["Entry", "Selection", "check_entry", "compare", "select"]


@dataclass(frozen=True)
class Entry:
    """A hotpatchable entry in the base image: ``entry`` (whole instructions covering the 2 bytes the short
    jump replaces) at the function's RVA and ``padding`` (5 bytes, all CC or all 90) right before it."""

    entry: bytes
    padding_rva: int
    padding: bytes


@dataclass
class Selection:
    """What the patch carries: ``changed`` (base, patched) pairs with their base ``entries`` (absent for
    out-of-line parts such as ``foo.cold``, which are carried but never entered from outside), ``new``
    functions, the patched ``bodies`` of all of them, and every ``refusals``."""

    changed: list[tuple[Symbol, Symbol]] = field(default_factory=list)
    new: list[Symbol] = field(default_factory=list)
    entries: dict[str, Entry] = field(default_factory=dict)
    bodies: dict[str, Body] = field(default_factory=dict)
    refusals: list[Refusal] = field(default_factory=list)

    def carried(self) -> list[Symbol]:
        """Patched symbols of every function in the blob, in blob order (changed first, then new)."""
        return [patched for _base, patched in self.changed] + list(self.new)


def compare(
    base: Image, patched: Image, pairs: list[tuple[Symbol, Symbol]]
) -> tuple[list[tuple[Symbol, Symbol]], dict[str, Body]]:
    """The pairs whose normalised bodies differ, and the patched bodies of those."""
    changed: list[tuple[Symbol, Symbol]] = []
    bodies: dict[str, Body] = {}
    for old, new in pairs:
        new_body = decode_body(patched, new)
        if same_body(decode_body(base, old), new_body):
            continue
        changed.append((old, new))
        bodies[new.name] = new_body
    return changed, bodies


def select(base: Image, patched: Image, pairs: Correlation) -> Selection:
    """Compare, add new functions, check entries and data; every problem becomes a Refusal."""
    selection = Selection()
    if base.pin.machine != patched.pin.machine:
        selection.refusals.append(
            Refusal(
                patched.name,
                f"base machine 0x{base.pin.machine:x} differs from patched 0x{patched.pin.machine:x}: the two files "
                "are builds for different CPUs; build both for the same architecture",
            )
        )
        return selection
    selection.changed, selection.bodies = compare(base, patched, pairs.functions)
    selection.new = list(pairs.new_functions)
    for symbol in selection.new:
        selection.bodies[symbol.name] = decode_body(patched, symbol)
    for old, new in selection.changed:
        if _out_of_line(new.name):
            continue
        entry, reason = check_entry(base, old)
        if entry is None:
            selection.refusals.append(Refusal(new.name, reason))
        else:
            selection.entries[new.name] = entry
    for name, body in sorted(selection.bodies.items()):
        selection.refusals.extend(Refusal(name, f"{problem}; use the cold path") for problem in body.problems)
    selection.refusals.extend(_data_refusals(base, patched, pairs))
    selection.refusals.extend(_loader_refusals(base, patched))
    return selection


def check_entry(base: Image, function: Symbol) -> tuple[Entry | None, str]:
    """Check that ``function``'s entry in the base image can take the 2-byte short jump and that at least 5
    bytes of CC or 90 padding lie right before it for the long jump. Returns (Entry, "") or (None, reason)."""
    rva = function.rva
    if rva < LONG_JUMP_SIZE:
        return None, f"{function.name}: entry at RVA 0x{rva:x} has no room for padding before it"
    padding = base.read(rva - LONG_JUMP_SIZE, LONG_JUMP_SIZE)
    head = base.read(rva, min(16, max(function.size, SHORT_JUMP_SIZE)))
    decoder = iced_x86.Decoder(64, head, ip=rva)
    covered: list[iced_x86.Instruction] = []
    length = 0
    for instr in decoder:
        covered.append(instr)
        length += instr.len
        if length >= SHORT_JUMP_SIZE:
            break
    first = covered[0] if covered else None
    if first is None or first.code == iced_x86.Code.INVALID:
        return None, f"{function.name}: entry at RVA 0x{rva:x} does not decode as an instruction; use the cold path"
    text = f"{first}"
    if first.len < SHORT_JUMP_SIZE and not all(i.mnemonic == iced_x86.Mnemonic.NOP for i in covered):
        return None, (
            f"{function.name}: entry at RVA 0x{rva:x} has a {first.len}-byte first instruction ({text}), so the "
            "2-byte jump would split it; it has no hotpatchable entry: rebuild with a hotpatchable entry "
            "(gcc ms_hook_prologue or -fpatchable-function-entry=7,5, clang -fms-hotpatch) or use the cold path"
        )
    if len(set(padding)) != 1 or padding[0] not in PADDING_BYTES:
        return None, (
            f"{function.name}: the 5 bytes before the entry at RVA 0x{rva:x} are {padding.hex(' ')}, not CC or 90 "
            "padding, so there is no room for the long jump and no hotpatchable entry: rebuild with function "
            "padding (ms_hook_prologue, -fpatchable-function-entry=7,5, lld-link /functionpadmin) or use the cold path"
        )
    return Entry(head[:length], rva - LONG_JUMP_SIZE, padding), ""


def _out_of_line(name: str) -> bool:
    return ".cold" in name or ".part." in name


def _data_refusals(base: Image, patched: Image, pairs: Correlation) -> list[Refusal]:
    refusals: list[Refusal] = []
    # The import tables are the loader's business: a new import shows up as an unbindable reference instead.
    skip = _import_sections(base) | _import_sections(patched)
    for old, new in pairs.data:
        if not new.section.writable or (new.section.name, new.section.rva) in skip:
            continue
        if not old.section.writable:
            refusals.append(
                Refusal(new.name, f"{new.name} became writable data in the patched build; use the cold path")
            )
            continue
        # Only size matters, not placement: patch code binds every object by name to the base image's copy.
        if old.size != new.size:
            refusals.append(
                Refusal(
                    new.name,
                    f"writable data {new.name} changed size ({old.size} -> {new.size} bytes); running processes hold "
                    "the old layout: keep the layout (put new state elsewhere, e.g. on the heap) or use the cold path",
                )
            )
        elif _initial(base, old) != _initial(patched, new):
            refusals.append(
                Refusal(
                    new.name,
                    f"writable data {new.name} has a different initial value; running processes keep the old one: "
                    "set it at run time instead, or use the cold path",
                )
            )
    for new in pairs.new_data:
        # A new unnamed contribution (e.g. gcc's pointer cells for a new LSDA) is refused only if patch code
        # uses it: the relocator then reports it as new writable data.
        if new.section.writable and not new.contribution and (new.section.name, new.section.rva) not in skip:
            refusals.append(
                Refusal(
                    new.name,
                    f"new writable data {new.name} ({new.size} bytes in {new.section.name}) does not exist in "
                    "running processes; allocate it at run time instead, or use the cold path",
                )
            )
    return refusals


def _import_sections(image: Image) -> set[tuple[str, int]]:
    found = {(s.name, s.rva) for s in image.sections if s.name == ".idata"}
    for slot in list(image.imports)[:1] + list(image.imports)[-1:]:
        section = image.section_at(slot)
        if section is not None:
            found.add((section.name, section.rva))
    return found


def _initial(image: Image, symbol: Symbol) -> str:
    """Initial bytes of a data object with absolute pointers replaced by what they name."""
    return image.contents(symbol.rva, symbol.size)


def _loader_refusals(base: Image, patched: Image) -> list[Refusal]:
    """TLS template/callbacks and static constructor lists: the loader ran them once; a patch cannot rerun them."""
    refusals: list[Refusal] = []
    if _tls(base) != _tls(patched):
        refusals.append(
            Refusal(
                "TLS",
                "the thread-local storage template or TLS callbacks differ between the builds; running threads "
                "keep the old TLS: use the cold path",
            )
        )
    for name in ("__CTOR_LIST__", "__xc_a"):
        if _pointer_list(base, name) != _pointer_list(patched, name):
            refusals.append(
                Refusal(
                    name,
                    "the static constructor list differs (a new or changed static constructor); a hotpatch runs "
                    "no constructors: initialise lazily instead, or use the cold path",
                )
            )
    return refusals


def _tls(image: Image) -> tuple[object, ...]:
    tls = getattr(image.pe, "DIRECTORY_ENTRY_TLS", None)
    if tls is None:
        return ()
    base = image.pin.image_base
    data = tls.struct
    template = b""
    start, end = data.StartAddressOfRawData - base, data.EndAddressOfRawData - base
    if 0 <= start <= end <= len(image.memory):
        template = image.memory[start:end]
    callbacks = tuple(_pointer_names(image, data.AddressOfCallBacks - base)) if data.AddressOfCallBacks else ()
    return template, data.SizeOfZeroFill, callbacks


def _pointer_list(image: Image, name: str) -> tuple[str, ...]:
    symbol = image.symbols.get(name)
    return tuple(_pointer_names(image, symbol.rva)) if symbol is not None else ()


def _pointer_names(image: Image, rva: int) -> list[str]:
    """Names of the pointers of a list at ``rva`` ending with 0 (a leading -1, as in __CTOR_LIST__, is skipped)."""
    names: list[str] = []
    for index in range(1024):
        at = rva + 8 * index
        if at < 0 or at + 8 > len(image.memory):
            break
        value = int.from_bytes(image.memory[at : at + 8], "little")
        if value == 0xFFFFFFFFFFFFFFFF and index == 0:
            continue
        if value == 0:
            break
        target = image.describe(value - image.pin.image_base)
        names.append(f"{target.kind}:{target.name}+{target.offset}")
    return names
