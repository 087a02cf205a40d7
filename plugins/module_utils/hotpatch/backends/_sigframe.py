"""Internal: the bytes that let a task borrowed for a remote operation put itself back if the engine dies.

A remote system call or call ends in Linux's ``rt_sigreturn``, reading a signal frame we wrote below the task's
stack pointer: the task's own registers, extended FP state and signal mask as they were when we stopped it.
The engine normally stops the task at the entry of that ``rt_sigreturn`` and restores the registers itself
(skipping the call); if the engine is gone, the kernel runs it and the task resumes exactly where it was.

Layouts per the Linux x86-64 ABI as the kernel defines them: ``struct rt_sigframe`` (arch/x86/include/asm/
sigframe.h: pretcode, ucontext, siginfo), ``struct ucontext`` and ``struct sigcontext`` (uapi asm/ucontext.h,
asm/sigcontext.h), and the XSAVE signal-frame markers ``struct _fpx_sw_bytes`` / FP_XSTATE_MAGIC1/2.
"""

from __future__ import annotations

import struct
from typing import Tuple

from ._ptrace import Regs

__all__ = [
    "CALL_STUB",
    "CALL_STUB_MARKER",
    "CALL_STUB_SIGRETURN_END",
    "FRAME_UC_OFFSET",
    "NO_SYSCALL",
    "RESTORE_RT",
    "SYSCALL_RET",
    "SYS_RT_SIGRETURN",
    "frame_size",
    "resume_registers",
    "signal_frame",
]

SYS_RT_SIGRETURN = 15
SYS_RESTART_SYSCALL = 219
NO_SYSCALL = (1 << 64) - 1  # orig_rax = -1: no system call to restart, or skip the one at an entry stop
# -errno values a stopped task's interrupted system call may hold, which the kernel turns into a restart on the
# way back to user mode when no signal handler runs (include/linux/errno.h).
_RESTART_SAME = (-512, -513, -514)  # ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND: re-run the same call
_RESTART_BLOCK = -516  # ERESTART_RESTARTBLOCK: run restart_syscall, which resumes from current->restart_block
_MASK64 = (1 << 64) - 1
_EFLAGS_TF = 0x100

# Borrowed from the target's own executable memory (glibc's signal restorer is always mapped in a Wine process):
RESTORE_RT = bytes.fromhex("48c7c00f0000000f05")  # mov rax, 15 ; syscall  (glibc __restore_rt)
SYSCALL_RET = bytes.fromhex("0f05c3")  # syscall ; ret

# Written by the engine into a page of its own for a call into Windows code. On entry: rbx = function, rcx/rdx/
# r8/r9 = arguments, r12 = address of the TEB's syscall-frame pointer (0: none to switch), r14 = the fresh frame
# for the call, r13 = the live frame to put back; rsp 16-byte aligned, the signal frame at rsp + 0x18. rbx, r12,
# r13, r14 are non-volatile in the Windows x64 ABI, so they survive the call.
CALL_STUB = bytes.fromhex(
    "4d85e4"  # test r12, r12
    "7404"  # jz +4
    "4d893424"  # mov [r12], r14      ; nested NT system calls use the fresh syscall frame
    "ffd3"  # call rbx
    "4d85e4"  # test r12, r12
    "7404"  # jz +4
    "4d892c24"  # mov [r12], r13      ; the thread's own syscall frame is live again
    "4889c7"  # mov rdi, rax        ; the result, read by the engine at the rt_sigreturn entry stop
    "4883c420"  # add rsp, 0x20       ; past the callee's home space: rsp - 8 is now the signal frame
    "b80f000000"  # mov eax, 15
    "0f05"  # syscall            ; rt_sigreturn
    "0f0b"  # ud2                ; never reached
)
# The call page starts with this marker, then the stub: a page an engine killed mid-call leaves behind (4 KiB,
# never executed again) can be told from a blob and from the program's own code.
CALL_STUB_MARKER = b"rebootless call stub v1\0".ljust(32, b"\0")
CALL_STUB_SIGRETURN_END = len(CALL_STUB) - 2  # rip at the rt_sigreturn entry stop, as an offset in the stub
CALL_STUB_FRAME_OFFSET = 0x18  # the signal frame (its pretcode slot) sits this far above the stub's entry rsp

_PRETCODE = 8
_UCONTEXT = 304  # uc_flags, uc_link, uc_stack (24), uc_mcontext (struct sigcontext, 256), uc_sigmask (8)
_SIGINFO = 128
_FRAME = _PRETCODE + _UCONTEXT + _SIGINFO
FRAME_UC_OFFSET = _PRETCODE
_UC_FP_XSTATE, _UC_SIGCONTEXT_SS, _UC_STRICT_RESTORE_SS = 0x1, 0x2, 0x4
_SS_FLAGS_NO_CHANGE = 3  # not 0, SS_ONSTACK or SS_DISABLE: rt_sigreturn's sigaltstack restore fails quietly (EINVAL)
_FP_XSTATE_MAGIC1, _FP_XSTATE_MAGIC2 = 0x46505853, 0x46505845
_SW_RESERVED = 464  # struct _fpx_sw_bytes inside the 512-byte FXSAVE area
_SIGCONTEXT_GPRS = [
    "r8",
    "r9",
    "r10",
    "r11",
    "r12",
    "r13",
    "r14",
    "r15",
    "rdi",
    "rsi",
    "rbp",
    "rbx",
    "rdx",
    "rax",
    "rcx",
    "rsp",
    "rip",
    "eflags",
]


def resume_registers(saved: Regs) -> Regs:
    """The registers that resume a stopped task as the kernel itself would have: an interrupted system call
    (orig_rax >= 0, rax one of the restart codes) is set up to run again (rip back over the 2-byte ``syscall``,
    rax its number, or restart_syscall for ERESTART_RESTARTBLOCK). orig_rax is -1 in the result, so the state
    can be set at any ptrace stop, including a syscall stop, with no restart logic of the kernel involved."""
    out = saved.copy()
    if saved.orig_rax < (1 << 63):
        error = int(saved.rax) - (1 << 64) if saved.rax >= (1 << 63) else int(saved.rax)
        if error in _RESTART_SAME:
            out.rax, out.rip = saved.orig_rax, saved.rip - 2
        elif error == _RESTART_BLOCK:
            out.rax, out.rip = SYS_RESTART_SYSCALL, saved.rip - 2
    out.orig_rax = NO_SYSCALL
    out.eflags &= ~_EFLAGS_TF
    return out


def frame_size(xstate: Tuple[bool, bytes]) -> int:
    """Bytes ``signal_frame`` needs (frame, alignment slack for the FP state, FP state, end marker)."""
    return _FRAME + 64 + len(xstate[1]) + 4


def signal_frame(address: int, back: Regs, xstate: Tuple[bool, bytes], sigmask: int, pretcode: int = 0) -> bytes:
    """A ``struct rt_sigframe`` to be written at ``address`` (the pretcode slot: rt_sigreturn reads the frame at
    its rsp - 8), restoring ``back`` (see resume_registers), the FP state as PTRACE_GETREGSET returned it and the
    blocked-signal mask. The FP state follows the frame, 64-byte aligned as XRSTOR requires, with the XSAVE
    signal-frame markers; a kernel that finds them inconsistent (e.g. AMX-sized state for a task not using
    AMX) falls back to restoring x87/SSE only. Returns frame_size(xstate) bytes."""
    fp_at = (address + _FRAME + 63) & ~63
    is_xstate, raw = xstate
    fp = bytearray(raw)
    if is_xstate and len(fp) >= _SW_RESERVED + 48:
        xfeatures = struct.unpack_from("<Q", fp, _SW_RESERVED)[0]  # ptrace reports XCR0 in the first word
        struct.pack_into("<IIQI28x", fp, _SW_RESERVED, _FP_XSTATE_MAGIC1, len(raw) + 4, xfeatures, len(raw))
        fp += struct.pack("<I", _FP_XSTATE_MAGIC2)
    gprs = [getattr(back, name) & _MASK64 for name in _SIGCONTEXT_GPRS]
    sigcontext = struct.pack("<18Q4H5Q64x", *gprs, back.cs & 0xFFFF, 0, 0, back.ss & 0xFFFF, 0, 0, 0, 0, fp_at)
    flags = _UC_FP_XSTATE | _UC_SIGCONTEXT_SS | _UC_STRICT_RESTORE_SS
    ucontext = struct.pack("<QQQi4xQ", flags, 0, 0, _SS_FLAGS_NO_CHANGE, 0) + sigcontext + struct.pack("<Q", sigmask)
    frame = struct.pack("<Q", pretcode) + ucontext + bytes(_SIGINFO)
    out = frame + bytes(fp_at - address - _FRAME) + bytes(fp)
    return out.ljust(frame_size(xstate), b"\0")
