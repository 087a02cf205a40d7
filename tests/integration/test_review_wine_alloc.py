"""Review: recovery of an allocation journaled ahead (release_intended) must find the memory allocate_near mapped.

allocate_near used to map the blob rw-p anonymous at the first 64 KiB-aligned free address above the module; when
the mapping just below that address was also anonymous rw-p, the kernel merged the two into one VMA, and
fresh_region (exactly one mapping [address, address + length)) no longer saw it. It now leaves a free page on both
sides. Measured read-only on the Wine processes of
this machine: 9 of 105 PE modules (apisetschema.dll at 0x68000000) have such a first candidate.

The target here is a plain Linux process (the Wine backend's remote system calls need only libc's syscall gadget),
which maps 64 KiB rw-p anonymous memory at a 64 KiB boundary, as a Wine heap view would be.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.backends import _procfs, wine
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.backends.base import ProcessInfo
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.host.blob import release_intended
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.host.journal import ProcessRecord

NEIGHBOUR = 0x3F0000000  # the application's rw-p memory: [NEIGHBOUR, NEIGHBOUR + 64 KiB)

_CHILD = f"""
import ctypes, sys
libc = ctypes.CDLL(None)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
got = libc.mmap({NEIGHBOUR}, 0x10000, 3, 0x22 | 0x100000, -1, 0)  # rw, private|anonymous|fixed_noreplace
print('ready' if got == {NEIGHBOUR} else 'failed', flush=True)
sys.stdin.read()
"""


@pytest.fixture
def target() -> Iterator[subprocess.Popen[str]]:
    child = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        yield child
    finally:
        child.kill()
        child.wait()


def test_recovery_frees_an_intended_blob_mapped_next_to_anonymous_memory(target: subprocess.Popen[str]) -> None:
    pid = target.pid
    info = ProcessInfo(pid, "python", f"{_procfs.boot_id()}:{_procfs.start_ticks(pid)}", None)
    with wine.WineProcess(info) as proc:
        address = proc.allocate_near(NEIGHBOUR, 0x1000)
        assert address == NEIGHBOUR + 0x20000  # the next 64 KiB boundary leaves a free page to the neighbour
    # the engine died right after the mmap (blob_mapped still false); the next run opens the process afresh
    record = ProcessRecord(
        pid=pid,
        start_time=info.start_time,
        name="python",
        windows_pid=None,
        module_base=NEIGHBOUR,
        module_path="appcore.dll",
        blob_address=address,
        blob_size=0x1000,
        unwind_count=0,
        blob_mapped=False,
    )
    with wine.WineProcess(info) as proc:
        note = release_intended(proc, record)
    mapped = [m for m in _procfs.read_maps(pid) if m.start <= address < m.end]
    assert not mapped, f"still mapped after recovery ({note}): {mapped}"
