"""Internal to rebootless.windows: decode a function and normalise every address in it to what it names.

A function body becomes its bytes with each outward-pointing field (rel8/rel32 branch displacement,
RIP-relative disp32, base-relocated imm64) zeroed, plus one token per field naming the target
("fn:scale+0", "imp:kernel32.dll!sleep", "data:hits+0", "const:<hex of the string>", "jt:<entry offsets>").
Two bodies with equal normal forms do the same thing wherever the linker put them and what they call.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass, field
from typing import NamedTuple

from .deps import iced_x86
from .model import RELOC_DIR64, Image, Symbol, Target

__all__ = ["Body", "JumpTable", "Reference", "decode_body", "same_body"]

_MAX_TABLE = 4096
if iced_x86 is not None:
    _BRANCH_KINDS = (iced_x86.OpKind.NEAR_BRANCH16, iced_x86.OpKind.NEAR_BRANCH32, iced_x86.OpKind.NEAR_BRANCH64)
    _DIRECT_FLOW = frozenset(
        (iced_x86.FlowControl.CALL, iced_x86.FlowControl.UNCONDITIONAL_BRANCH, iced_x86.FlowControl.CONDITIONAL_BRANCH)
    )
    _INDIRECT = iced_x86.FlowControl.INDIRECT_BRANCH
    _EXCEPTION = iced_x86.FlowControl.EXCEPTION
    _CONDITIONAL = iced_x86.FlowControl.CONDITIONAL_BRANCH
    _CMP = iced_x86.Mnemonic.CMP


class JumpTable(NamedTuple):
    """A table of int32 offsets relative to its own start (gcc and clang switch tables): ``rva`` in the image,
    ``entries`` as function-relative offsets of the case labels."""

    rva: int
    entries: tuple[int, ...]


class Reference(NamedTuple):
    """One field of a body that names something outside it (or, for abs64, anything at all).

    ``offset``: the field's offset in the body (bytes); ``size``: 1, 4 or 8; ``kind``: "rel" (displacement to
    ``next_ip``, the function-relative end of its instruction) or "abs64"; ``target``: what it names;
    ``call``: the field is a direct call or jump (so it does not take the target's address);
    ``table``: set when the target is a jump table of this function; ``instr_at``: offset of the instruction
    holding the field.
    """

    offset: int
    size: int
    kind: str
    next_ip: int
    target: Target
    call: bool
    table: JumpTable | None = None
    instr_at: int = 0


@dataclass
class Body:
    """A decoded function: ``symbol`` in its image, raw ``code``, the normal form and every outward reference.

    ``problems``: things the relocator could not carry (a rel8 leaving the function, an undecodable byte),
    worded for a human.
    """

    symbol: Symbol
    code: bytes
    normal: bytes
    tokens: tuple[str, ...]
    references: list[Reference] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def decode_body(image: Image, symbol: Symbol) -> Body:
    """Decode ``symbol``'s bytes (its .pdata range) with iced-x86 and normalise them (see module docstring)."""
    begin, end = symbol.rva, symbol.end
    code = image.read(begin, symbol.size)
    normal = bytearray(code)
    tokens: list[str] = []
    references: list[Reference] = []
    problems: list[str] = []
    relocs = image.relocations_in(begin, end)
    decoder = iced_x86.Decoder(64, code, ip=begin)
    has_indirect_jump = False
    inline_tables: dict[int, int] = {}  # function-relative start -> end of jump tables inside the body
    starts: list[int] = []  # instruction starts, kept only when base relocations point into the body
    candidates: list[int] = []  # references that lea an anonymous constant
    compares: list[tuple[int, int]] = []  # (ip, imm) of `cmp reg, imm` right before a jcc: switch bounds
    prev: iced_x86.Instruction | None = None
    for instr in decoder:  # hot loop: touch as few instruction properties as possible
        before, prev = prev, instr
        flow = instr.flow_control
        if inline_tables and instr.ip - begin in inline_tables:  # table data: move the decoder past it
            skip = inline_tables[instr.ip - begin]
            decoder.position = skip
            decoder.ip = begin + skip
            continue
        if relocs:
            starts.append(instr.ip)
        if flow in _DIRECT_FLOW:
            if flow == _CONDITIONAL and before is not None and _is_cmp_imm(before):
                compares.append((before.ip, before.immediate(1)))
            if instr.op0_kind not in _BRANCH_KINDS:
                continue
            target_rva = instr.near_branch_target
            if begin <= target_rva < end:
                continue  # inside the function: position-independent, kept as raw bytes
            offsets = decoder.get_constant_offsets(instr)
            field_at, size, direct = offsets.immediate_offset, offsets.immediate_size, True
        elif instr.is_ip_rel_memory_operand:
            target_rva = instr.ip_rel_memory_address
            if begin <= target_rva < end:
                # inside the function: position-independent; a jump table there is data, not code
                if target_rva > instr.ip and instr.mnemonic == iced_x86.Mnemonic.LEA:
                    bound = compares[-1][1] if compares else None
                    table = _jump_table(image, target_rva, begin, end, bound)
                    if table is not None:
                        inline_tables[target_rva - begin] = target_rva - begin + 4 * len(table.entries)
                continue
            offsets = decoder.get_constant_offsets(instr)
            field_at, size, direct = offsets.displacement_offset, 4, False
        else:
            if flow == _INDIRECT:
                has_indirect_jump = True
            elif flow == _EXCEPTION and instr.code == iced_x86.Code.INVALID:
                problems.append(f"undecodable byte at {symbol.name}+0x{instr.ip - begin:x}")
            continue
        start = instr.ip - begin
        target = image.describe(target_rva, 0 if direct else _memory_size(instr))
        if target.kind == "const" and instr.mnemonic == iced_x86.Mnemonic.LEA:
            candidates.append(len(references))  # maybe a jump table: decided after the loop
        ref = Reference(start + field_at, size, "rel", start + instr.len, target, direct, None, start)
        references.append(ref)
        normal[ref.offset : ref.offset + size] = bytes(size)
        tokens.append(_token(image, ref, begin))
    for reloc in relocs:  # absolute addresses (mov r64, imm64 and the like): rare in x64 code
        kind = image.relocations[reloc]
        if kind != RELOC_DIR64:
            problems.append(
                f"base relocation of type {kind} at {symbol.name}+0x{reloc - begin:x} is not a 64-bit address "
                "the builder can move (only IMAGE_REL_BASED_DIR64 is)"
            )
            continue
        index = bisect.bisect_right(starts, reloc) - 1
        if index < 0 or reloc + 8 > end:
            continue
        start = starts[index] - begin
        next_ip = (starts[index + 1] if index + 1 < len(starts) else end) - begin
        pointed = image.pointer(reloc)
        inside = begin <= pointed < end
        target = Target("self", symbol.name, pointed - begin, pointed) if inside else image.describe(pointed)
        ref = Reference(reloc - begin, 8, "abs64", next_ip, target, False, None, start)
        references.append(ref)
        normal[ref.offset : ref.offset + 8] = bytes(8)
        tokens.append(_token(image, ref, begin))
    if has_indirect_jump and candidates:  # a lea of a table-shaped constant only makes a jump table then
        for index in candidates:
            ref = references[index]
            found = bisect.bisect_left(compares, (begin + ref.instr_at, -1)) - 1
            bound = compares[found][1] if found >= 0 else None
            table = _jump_table(image, ref.target.rva, begin, end, bound)
            if table is not None:
                references[index] = Reference(
                    ref.offset, ref.size, ref.kind, ref.next_ip, ref.target, ref.call, table, ref.instr_at
                )
                tokens[index] = _token(image, references[index], begin)
    return Body(symbol, code, bytes(normal), tuple(tokens), references, problems)


def same_body(old: Body, new: Body) -> bool:
    """True when both bodies have the same normal form and name the same targets."""
    return old.normal == new.normal and old.tokens == new.tokens


def _token(image: Image, ref: Reference, begin: int) -> str:
    target = ref.target
    if ref.table is None:  # by identity: Image.describe hands out one Target object per address
        found = image.tokens.get(id(target))
        if found is not None and found[0] is target:
            return found[1]
        token = _target_token(image, target)
        image.tokens[id(target)] = (target, token)
        return token
    return "jt:" + ",".join(str(e) for e in ref.table.entries)


def _target_token(image: Image, target: Target) -> str:
    if target.kind == "import":
        return f"imp:{target.name}"
    if target.kind == "data" and not target.writable and not image.symbols[target.name].section.executable:
        # read-only data: what it holds matters, not just its name
        return f"rodata:{target.name}+{target.offset}#{image.symbol_digest(target.name)}"
    if target.kind in ("function", "data", "self"):
        return f"{target.kind}:{target.name}+{target.offset}"
    if target.kind == "const":
        return "const:" + image.contents(target.rva, target.size)
    return f"{target.kind}:{target.name}+{target.offset}"


def _jump_table(image: Image, rva: int, begin: int, end: int, count_hint: int | None) -> JumpTable | None:
    """Entries of a self-relative int32 table at ``rva`` whose targets fall inside [begin, end), or None."""
    section = image.section_at(rva)
    if section is None:
        return None
    limit = (count_hint + 1) if count_hint is not None and 0 <= count_hint < _MAX_TABLE else _MAX_TABLE
    entries: list[int] = []
    at = rva
    while len(entries) < limit and at + 4 <= section.end:
        (delta,) = struct.unpack_from("<i", image.memory, at)
        target = rva + delta
        if not begin <= target < end:
            break
        entries.append(target - begin)
        at += 4
    if len(entries) < 2 or (count_hint is not None and len(entries) != limit):
        return None
    return JumpTable(rva, tuple(entries))


def _is_cmp_imm(instr: iced_x86.Instruction) -> bool:
    return bool(instr.mnemonic == _CMP and instr.op_count == 2 and _is_immediate(instr.op1_kind))


def _is_immediate(kind: int) -> bool:
    return kind in (
        iced_x86.OpKind.IMMEDIATE8,
        iced_x86.OpKind.IMMEDIATE32,
        iced_x86.OpKind.IMMEDIATE8TO32,
        iced_x86.OpKind.IMMEDIATE8TO64,
        iced_x86.OpKind.IMMEDIATE32TO64,
    )


def _memory_size(instr: iced_x86.Instruction) -> int:
    try:
        return int(iced_x86.MemorySizeExt.size(instr.memory_size))
    except (AttributeError, ValueError):
        return 0
