"""Internal: where Wine keeps a thread's syscall frame, read from the target's own ntdll.so code.

A Wine thread blocked in a Linux system call runs Wine's Unix-side code on a separate stack; its Windows-side
registers sit in a *syscall frame* whose address is at a fixed TEB offset. Two things need it: the activeness
check (the Windows-side return addresses are on the Windows stack, above the frame's rsp) and a remote call on
such a thread (a nested NT system call would overwrite the frame of the blocked one, so the call gets a fresh
frame, as Wine's own user-mode callbacks do). The offsets differ between Wine versions, so they are read from
the instructions of ``__wine_syscall_dispatcher`` in the target (Wine 8: ``mov %gs:0x328,%rcx`` before the
symbol ``__wine_syscall_dispatcher_prolog_end``, ``mov %rsp,0x88(%rcx)`` after it). When the pattern is not
found the layout is unknown and callers fall back to what needs no frame.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable, List, Optional

from ..errors import BackendError
from ._procfs import Mapping

__all__ = ["WineLayout", "elf_symbol", "probe"]

_PROLOG_END = b"__wine_syscall_dispatcher_prolog_end"
_LOAD_FRAME = b"\x65\x48\x8b\x0c\x25"  # mov %gs:disp32, %rcx
_SAVE_RSP = b"\x48\x89\xa1"  # mov %rsp, disp32(%rcx)
SHT_DYNSYM = 11


@dataclass(frozen=True)
class WineLayout:
    """TEB offset of the syscall-frame pointer, and the offset of the saved Windows-side rsp in the frame."""

    teb_syscall_frame: int
    frame_rsp: int


def elf_symbol(path: str, name: bytes) -> Optional[int]:
    """st_value of dynamic symbol ``name`` in the 64-bit ELF file at ``path``, or None."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return None
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    for index in range(shnum):
        header = shoff + index * shentsize
        sh_type = struct.unpack_from("<I", data, header + 4)[0]
        if sh_type != SHT_DYNSYM:
            continue
        offset, size, link = struct.unpack_from("<QQI", data, header + 0x18)
        strtab = struct.unpack_from("<Q", data, shoff + link * shentsize + 0x18)[0]
        for sym in range(offset, offset + size, 24):
            st_name = struct.unpack_from("<I", data, sym)[0]
            end = data.find(b"\0", strtab + st_name)
            if data[strtab + st_name : end] == name:
                return int(struct.unpack_from("<Q", data, sym + 8)[0])
    return None


def probe(maps: List[Mapping], read: Callable[[int, int], bytes]) -> Optional[WineLayout]:
    """Read the layout from the ntdll.so mapped in the target (``read(address, size)`` reads its memory)."""
    ntdll = next((m for m in maps if m.offset == 0 and m.path.endswith("/ntdll.so")), None)
    if ntdll is None:
        return None
    value = elf_symbol(ntdll.path, _PROLOG_END)
    if value is None:
        return None
    address = ntdll.start + value
    try:
        before = read(address - 0x40, 0x40)
        after = read(address, 0x80)
    except BackendError:  # unreadable: an unknown build; callers fall back
        return None
    load = before.rfind(_LOAD_FRAME)
    save = after.find(_SAVE_RSP)
    if load < 0 or save < 0 or load + 9 > len(before) or save + 7 > len(after):
        return None
    teb_offset = struct.unpack_from("<i", before, load + 5)[0]
    rsp_offset = struct.unpack_from("<i", after, save + 3)[0]
    if not (0 < teb_offset < 0x2000 and 0 < rsp_offset < 0x400):
        return None
    return WineLayout(teb_offset, rsp_offset)
