"""The Windows backend against a strict fake of kernel32: the call sequence, its arguments and error paths."""

from __future__ import annotations

import struct

import iced_x86
import pytest

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.backends import _win32 as w
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.backends.windows import (
    WindowsBackend,
    remote_call_stub,
)
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.errors import BackendError

from .fake_kernel32 import NTDLL_BASE, NTDLL_EXPORTS, FakeKernel32, StrictnessError
from .windows_target import ENTRY, MODULE_BASE, PID
from .windows_target import module_image as _module


def test_a_plain_64_bit_process_opens_without_refusal_and_lists_its_modules(kernel: FakeKernel32) -> None:
    backend = WindowsBackend(kernel)
    assert [(p.pid, p.name) for p in backend.processes()] == [(PID, "appsvc.exe")]
    with backend.open(PID) as process:
        assert process.refusal() is None
        modules = {m.name: m for m in process.modules()}
        assert modules["appsvc.exe"].base == MODULE_BASE
        assert process.info.start_time == str(kernel.processes[PID].start_time)
    kernel.assert_no_leaks()


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ({"machine": 0x014C}, "32-bit (WOW64) process"),
        ({"native_machine": 0xAA64}, "x64 emulation"),
        ({"prohibit_dynamic_code": True}, "Arbitrary Code Guard"),
    ],
)
def test_processes_the_engine_must_not_patch_are_refused_with_their_reason(setup: dict[str, int], reason: str) -> None:
    fake = FakeKernel32()
    fake.add_process(PID, "svc.exe", MODULE_BASE, bytes(_module()), **setup)
    with WindowsBackend(fake).open(PID) as process:
        refusal = process.refusal()
    assert refusal is not None
    assert reason in refusal
    fake.assert_no_leaks()


def test_a_protected_process_cannot_be_opened_and_the_error_says_why() -> None:
    fake = FakeKernel32()
    fake.add_process(PID, "lsass.exe", MODULE_BASE, bytes(_module()), protection=0x41)
    with pytest.raises(BackendError, match=r"access denied: run the engine as an Administrator.*protected"):
        WindowsBackend(fake).open(PID)
    fake.assert_no_leaks()


def test_a_vanished_process_gives_a_clear_error(kernel: FakeKernel32) -> None:
    with pytest.raises(BackendError, match=r"OpenProcess\(7\) failed: invalid parameter: the process has exited"):
        WindowsBackend(kernel).open(7)


def test_memory_near_the_module_is_found_above_it_aligned_and_skipping_what_is_taken(kernel: FakeKernel32) -> None:
    with WindowsBackend(kernel).open(PID) as process:
        first = process.allocate_near(MODULE_BASE, 0x3000)
        second = process.allocate_near(MODULE_BASE, 0x3000)
        assert MODULE_BASE < first < second < MODULE_BASE + 0x7FFF0000
        assert first % w.ALLOCATION_GRANULARITY == 0 and second % w.ALLOCATION_GRANULARITY == 0
        assert first >= MODULE_BASE + 0x4000  # not over the image
        process.free(first, 0x3000)
        process.free(second, 0x3000)
        with pytest.raises(BackendError, match=r"no free .* use the cold path"):
            process.allocate_near(MODULE_BASE, 0x3000, span=0x4000)
    kernel.assert_no_leaks()


def test_allocation_is_announced_before_it_is_made_and_recognised_afterwards(kernel: FakeKernel32) -> None:
    announced: list[int] = []
    with WindowsBackend(kernel).open(PID) as process:
        blob = process.allocate_near(MODULE_BASE, 0x1800, intent=announced.append)
        assert announced == [blob]
        assert process.fresh_region(blob, 0x1800) and process.fresh_region(blob, 0x2000)
        assert not process.fresh_region(blob, 0x3000)  # not what an allocation of this size would be
        assert not process.fresh_region(MODULE_BASE, 0x1000)  # the image is no fresh private allocation
        process.free(blob, 0x1800)
        assert not process.fresh_region(blob, 0x1800)  # nothing there any more
    kernel.assert_no_leaks()


def _patch(process: object, kernel: FakeKernel32) -> int:
    """The engine's sequence for one function: stage, register unwind, quiesce, switch, resume."""
    blob = process.allocate_near(MODULE_BASE, 0x1000)  # type: ignore[attr-defined]
    process.write(blob, b"\xb8\x02\x00\x00\x00\xc3" + bytes(10) + struct.pack("<III", 0x10000, 0x10006, 0x10010))  # type: ignore[attr-defined]
    process.protect(blob, 0x1000, "rx")  # type: ignore[attr-defined]
    process.add_function_table(blob + 16, 1, MODULE_BASE)  # type: ignore[attr-defined]
    quiesced = process.quiesce()  # type: ignore[attr-defined]
    padding = MODULE_BASE + ENTRY - 5
    process.write(padding, b"\xe9" + struct.pack("<i", blob - (padding + 5)))  # type: ignore[attr-defined]
    process.write(MODULE_BASE + ENTRY, b"\xeb\xf9")  # type: ignore[attr-defined]
    process.flush_instruction_cache(padding, 7)  # type: ignore[attr-defined]
    assert quiesced.resume() >= 0
    return int(blob)


def test_the_full_patch_sequence_writes_the_jumps_and_registers_unwind_data(kernel: FakeKernel32) -> None:
    with WindowsBackend(kernel).open(PID) as process:
        blob = _patch(process, kernel)
        image = kernel.processes[PID].regions[0].data
        assert image[ENTRY - 5 : ENTRY + 2] == b"\xe9" + struct.pack("<i", blob - (MODULE_BASE + ENTRY)) + b"\xeb\xf9"
        assert kernel.processes[PID].tables == {blob + 16: (1, MODULE_BASE)}
        assert process.read(MODULE_BASE + ENTRY, 2) == b"\xeb\xf9"
        assert image[0x1000 : ENTRY - 5] == b"\xcc" * 0x1B  # the rest of the padding untouched
        assert (MODULE_BASE + ENTRY - 5, 7) in kernel.flushed
        process.delete_function_table(blob + 16)
        assert kernel.processes[PID].tables == {}
    kernel.assert_no_leaks()


def test_writing_code_while_threads_run_is_caught_by_the_fake(kernel: FakeKernel32) -> None:
    with WindowsBackend(kernel).open(PID) as process, pytest.raises(StrictnessError, match="written while threads"):
        process.write(MODULE_BASE + ENTRY, b"\xeb\xf9")
    assert kernel.processes[PID].regions[0].protect == w.PAGE_EXECUTE_READ


def test_unwind_registration_under_quiesce_is_refused_as_a_thread_the_debugger_would_freeze(
    kernel: FakeKernel32,
) -> None:
    with WindowsBackend(kernel).open(PID) as process:
        quiesced = process.quiesce()
        with pytest.raises(StrictnessError, match="CREATE_THREAD event would freeze"):
            process.add_function_table(MODULE_BASE, 1, MODULE_BASE)
        quiesced.resume()
    kernel.assert_no_leaks()


def test_a_remote_call_that_never_returns_fails_and_keeps_its_code_mapped(kernel: FakeKernel32) -> None:
    kernel.hang_remote_threads = True
    with WindowsBackend(kernel).open(PID) as process:
        regions_before = len(kernel.processes[PID].regions)
        with pytest.raises(BackendError, match="did not return within 5000 ms"):
            process.add_function_table(MODULE_BASE + 0x2000, 1, MODULE_BASE)
        assert len(kernel.processes[PID].regions) == regions_before + 1  # the stub page stays: a thread may run it
    kernel.assert_no_leaks()


def test_cfg_processes_get_no_valid_blob_targets_but_the_address_taken_ones() -> None:
    fake = FakeKernel32()
    fake.add_process(PID, "svc.exe", MODULE_BASE, bytes(_module()), cfg=True)
    with WindowsBackend(fake).open(PID) as process:
        blob = process.allocate_near(MODULE_BASE, 0x1000)
        process.protect(blob, 0x1000, "rx")  # with PAGE_TARGETS_NO_UPDATE, or the fake would not accept it
        process.set_valid_call_targets([blob + 0x40])
        assert fake.processes[PID].valid_call_targets == {blob + 0x40}
        with pytest.raises(BackendError, match="not 16-byte aligned"):
            process.set_valid_call_targets([blob + 0x41])
    fake.assert_no_leaks()


def test_dynamic_code_blocked_is_explained_when_memory_cannot_become_executable() -> None:
    fake = FakeKernel32()
    fake.add_process(PID, "svc.exe", MODULE_BASE, bytes(_module()), prohibit_dynamic_code=True)
    with WindowsBackend(fake).open(PID) as process:
        blob = process.allocate_near(MODULE_BASE, 0x1000)
        with pytest.raises(BackendError, match=r"Arbitrary Code Guard.*Win32 error 1655"):
            process.protect(blob, 0x1000, "rx")
        process.free(blob, 0x1000)
    fake.assert_no_leaks()


def test_the_remote_call_stub_calls_the_function_with_three_arguments_from_the_block() -> None:
    decoder = iced_x86.Decoder(64, remote_call_stub())
    formatter = iced_x86.Formatter(iced_x86.FormatterSyntax.INTEL)
    text = [formatter.format(instruction) for instruction in decoder]
    assert text == [
        "sub rsp,28h",
        "mov rax,rcx",
        "mov rcx,[rax]",
        "mov edx,[rax+8]",
        "mov r8,[rax+10h]",
        "call qword ptr [rax+18h]",
        "movzx eax,al",
        "add rsp,28h",
        "ret",
    ]


def test_ntdll_functions_are_located_through_the_targets_own_module_list(kernel: FakeKernel32) -> None:
    with WindowsBackend(kernel).open(PID) as process:
        (address,) = process._remote_functions(("RtlAddFunctionTable",))
    assert address == NTDLL_BASE + NTDLL_EXPORTS["RtlAddFunctionTable"]
