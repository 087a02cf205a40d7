"""Internal: where Wine keeps a thread's syscall frame, read from the target's own ntdll.so code.

A Wine thread blocked in a Linux system call runs Wine's Unix-side code on a separate stack; its Windows-side
registers sit in a *syscall frame* whose address is at a fixed TEB offset. Two things need it: the activeness
check (the Windows-side return addresses are on the Windows stack, above the frame's rsp) and a remote call on
such a thread (a nested NT system call would overwrite the frame of the blocked one, so the call gets a fresh
frame, as Wine's own user-mode callbacks do). The offsets differ between Wine versions, so they are read from
the instructions of ``__wine_syscall_dispatcher`` in the target (Wine 8: ``mov %gs:0x328,%rcx`` before the
symbol ``__wine_syscall_dispatcher_prolog_end``, ``mov %rsp,0x88(%rcx)`` after it). When the pattern is not
found the layout is unknown and callers fall back to what needs no frame.

A remote call may only borrow a thread parked in a wait, and a blocked ``read`` is a wait only on the thread's
*wait pipe* (the wineserver wakes it there), not on its *reply pipe* (the thread is in the middle of a server
request). Wine keeps both fds in its per-thread data inside the TEB: ``request_fd, reply_fd, wait_fd[0],
wait_fd[1]`` (Wine 8: TEB + 0x378). ``probe_thread_fds`` finds that quadruple by what the fds are, not by a
fixed offset: four pipe ends, write / read / read / write, the last two ends of one pipe (the wait pipe's write
end stays open in the process; the reply pipe's went to the server).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

from ..errors import BackendError
from ._procfs import Mapping

__all__ = ["ThreadFds", "WineLayout", "elf_symbol", "probe", "probe_thread_fds"]

_PROLOG_END = b"__wine_syscall_dispatcher_prolog_end"
_LOAD_FRAME = b"\x65\x48\x8b\x0c\x25"  # mov %gs:disp32, %rcx
_SAVE_RSP = b"\x48\x89\xa1"  # mov %rsp, disp32(%rcx)
SHT_DYNSYM = 11
# Where Wine's per-thread data lives in the TEB (GdiTebBatch, 0x2f0 on x64) and how far the fds may be into it.
_THREAD_DATA = 0x2F0
_THREAD_DATA_SPAN = 0x200
_O_ACCMODE, _O_RDONLY, _O_WRONLY = 3, 0, 1


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


@dataclass(frozen=True)
class ThreadFds:
    """TEB offsets of a Wine thread's server fds (int32 each): ``reply_fd`` (read end of the reply pipe) and
    ``wait_fd`` (read end of the wait pipe); ``request_fd`` precedes reply_fd."""

    request_fd: int
    reply_fd: int
    wait_fd: int


def _pipe_end(pid: int, fd: int) -> Optional[Tuple[str, int]]:
    """(pipe inode text, access mode) of ``fd`` in process ``pid``, or None when it is not a pipe."""
    if not 0 <= fd < 1 << 20:
        return None
    try:
        link = os.readlink(f"/proc/{pid}/fd/{fd}")
        with open(f"/proc/{pid}/fdinfo/{fd}") as handle:
            flags = next((line.split()[1] for line in handle if line.startswith("flags:")), "")
    except (OSError, StopIteration):
        return None
    if not link.startswith("pipe:") or not flags:
        return None
    return link, int(flags, 8) & _O_ACCMODE


def probe_thread_fds(pid: int, teb: int, read: Callable[[int, int], bytes]) -> Optional[ThreadFds]:
    """Find the server fds in the TEB at ``teb`` of a thread of ``pid`` (see the module docstring); None when no
    unique quadruple matches (an unknown Wine build: callers then treat no blocked read as a wait)."""
    try:
        data = read(teb + _THREAD_DATA, _THREAD_DATA_SPAN)
    except BackendError:
        return None
    values = struct.unpack(f"<{len(data) // 4}i", data)
    found: List[int] = []
    for index in range(len(values) - 3):
        request, reply, wait_read, wait_write = values[index : index + 4]
        if len({request, reply, wait_read, wait_write}) != 4 or min(request, reply, wait_read, wait_write) < 0:
            continue
        ends = [_pipe_end(pid, fd) for fd in (request, reply, wait_read, wait_write)]
        if any(end is None for end in ends):
            continue
        modes = [end[1] for end in ends if end is not None]
        inodes = [end[0] for end in ends if end is not None]
        if modes == [_O_WRONLY, _O_RDONLY, _O_RDONLY, _O_WRONLY] and inodes[2] == inodes[3] != inodes[1]:
            found.append(_THREAD_DATA + 4 * index)
    if len(found) != 1:
        return None
    return ThreadFds(found[0], found[0] + 4, found[0] + 8)
