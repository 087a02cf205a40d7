"""The self-restoring signal frame of the Wine backend's remote operations: layout and restart rules.

The frame is proven on real processes by tests/integration/test_faults_walk.py (an engine dying at every step of
a remote operation); here each field is checked against the kernel's layout so a mistake names itself.
"""

from __future__ import annotations

import struct

import iced_x86
import pytest

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.backends._ptrace import Regs
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.backends._sigframe import (
    CALL_STUB,
    CALL_STUB_SIGRETURN_END,
    NO_SYSCALL,
    frame_size,
    resume_registers,
    signal_frame,
)

MASK = (1 << 64) - 1
UC = 8  # struct ucontext follows the pretcode slot
SIGCONTEXT = UC + 40  # after uc_flags, uc_link and the 24-byte stack_t
GPRS = [
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


def regs(**values: int) -> Regs:
    out = Regs()
    out.orig_rax = NO_SYSCALL
    out.cs, out.ss = 0x33, 0x2B
    for name, value in values.items():
        setattr(out, name, value & MASK)
    return out


@pytest.mark.parametrize("error", [512, 513, 514])
def test_an_interrupted_system_call_is_set_up_to_run_again(error: int) -> None:
    back = resume_registers(regs(orig_rax=202, rax=-error, rip=0x7F0000001002))
    assert (back.rax, back.rip, back.orig_rax) == (202, 0x7F0000001000, NO_SYSCALL)


def test_a_restart_block_system_call_resumes_through_restart_syscall() -> None:
    back = resume_registers(regs(orig_rax=230, rax=-516, rip=0x7F0000001002))
    assert (back.rax, back.rip, back.orig_rax) == (219, 0x7F0000001000, NO_SYSCALL)


@pytest.mark.parametrize(
    ("orig_rax", "rax"),
    [(0, 12), (202, -4), (NO_SYSCALL, -512)],  # a finished call, EINTR (no restart), user code holding -512
)
def test_anything_else_resumes_unchanged_with_no_restart_left_to_the_kernel(orig_rax: int, rax: int) -> None:
    back = resume_registers(regs(orig_rax=orig_rax, rax=rax, rip=0x401000, eflags=0x346))
    assert (back.rax, back.rip, back.orig_rax) == (rax & MASK, 0x401000, NO_SYSCALL)
    assert back.eflags == 0x246  # the trap flag never survives


def test_the_frame_holds_every_register_the_fp_state_and_the_mask_where_rt_sigreturn_reads_them() -> None:
    raw = bytearray(832)  # an AVX-sized XSAVE area as PTRACE_GETREGSET returns it
    struct.pack_into("<Q", raw, 464, 0x7)  # XCR0 in the first software-reserved word
    back = regs(**{name: 0x1000 + i for i, name in enumerate(GPRS)})
    address = 0x7FFE0000_1238
    frame = signal_frame(address, back, (True, bytes(raw)), sigmask=0x4001, pretcode=0x7F00_0000_4440)
    assert len(frame) == frame_size((True, bytes(raw)))
    assert struct.unpack_from("<Q", frame, 0)[0] == 0x7F00_0000_4440
    flags, link, ss_sp, ss_flags, ss_size = struct.unpack_from("<QQQi4xQ", frame, UC)
    assert (flags, link, ss_sp, ss_flags, ss_size) == (0x7, 0, 0, 3, 0)  # FP_XSTATE|SIGCONTEXT_SS|STRICT_RESTORE_SS
    values = struct.unpack_from("<18Q", frame, SIGCONTEXT)
    assert dict(zip(GPRS, values, strict=True)) == {name: getattr(back, name) for name in GPRS}
    cs, _gs, _fs, ss = struct.unpack_from("<4H", frame, SIGCONTEXT + 144)
    assert (cs, ss) == (0x33, 0x2B)
    fpstate = struct.unpack_from("<Q", frame, SIGCONTEXT + 152 + 32)[0]
    assert fpstate % 64 == 0 and address + 440 <= fpstate
    assert struct.unpack_from("<Q", frame, UC + 40 + 256)[0] == 0x4001
    fp = fpstate - address
    magic1, extended, xfeatures, size = struct.unpack_from("<IIQI", frame, fp + 464)
    assert (magic1, extended, xfeatures, size) == (0x46505853, 836, 0x7, 832)
    assert struct.unpack_from("<I", frame, fp + 832)[0] == 0x46505845


def test_an_fxsave_only_state_carries_no_xsave_markers() -> None:
    frame = signal_frame(0x10000, regs(), (False, bytes(512)), 0)
    fpstate = struct.unpack_from("<Q", frame, SIGCONTEXT + 152 + 32)[0]
    assert frame[fpstate - 0x10000 + 464 : fpstate - 0x10000 + 468] == bytes(4)


def test_the_call_stub_switches_the_syscall_frame_calls_and_ends_in_rt_sigreturn() -> None:
    decoder = iced_x86.Decoder(64, CALL_STUB, ip=0)
    formatter = iced_x86.Formatter(iced_x86.FormatterSyntax.INTEL)
    listing = [formatter.format(instruction) for instruction in decoder]
    assert listing == [
        "test r12,r12",
        "je short 9",
        "mov [r12],r14",
        "call rbx",
        "test r12,r12",
        "je short 0000000000000014h",
        "mov [r12],r13",
        "mov rdi,rax",
        "add rsp,20h",
        "mov eax,0Fh",
        "syscall",
        "ud2",
    ]
    assert CALL_STUB[CALL_STUB_SIGRETURN_END - 2 : CALL_STUB_SIGRETURN_END] == b"\x0f\x05"
