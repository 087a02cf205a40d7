"""Signals sent to a thread the Wine backend borrows for a remote system call are never lost.

The operation blocks every signal on the borrowed thread, so one sent meanwhile stays pending in the kernel and
is delivered once the thread's own mask is back: by the engine, or by the rt_sigreturn that a dead engine leaves
the thread to run. A native Linux process with a SIGUSR1 handler shows it (a Windows program under Wine has no
handler to observe); the remote-operation code is the same.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.backends import _procfs, _ptrace
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.backends.base import ProcessInfo
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.backends.wine import WineProcess

pytestmark = [pytest.mark.integration]

SYS_GETPID = 39
# Prints "ready", then "u" for each SIGUSR1, while its only thread sleeps in short naps: Python runs a handler only
# between bytecodes, so a signal that lands while the thread is in our operation (not in its sleep) shows at
# the end of the current nap.
CHILD = (
    "import os, signal, sys, time\n"
    "signal.signal(signal.SIGUSR1, lambda *a: os.write(1, b'u'))\n"
    "sys.stdout.write('ready\\n'); sys.stdout.flush()\n"
    "while True: time.sleep(0.05)\n"
)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    yield proc
    proc.kill()
    proc.wait()


def _engine(pid: int, die_after: int) -> None:
    """In a forked child: borrow ``pid``'s thread for getpid(); send it SIGUSR1 when the operation starts; exit
    like a killed engine after ``die_after`` driving requests (0: finish and release normally)."""
    info = ProcessInfo(pid, "python", f"{_procfs.boot_id()}:{_procfs.start_ticks(pid)}", None)
    handle = WineProcess(info)
    real_syscall, count = _ptrace.syscall, [0]

    def syscall(tid: int, sig: int = 0) -> None:
        count[0] += 1
        if count[0] == 1:
            _ptrace.tgkill(pid, tid, signal.SIGUSR1)
        if count[0] == die_after:
            os._exit(99)
        real_syscall(tid, sig)

    _ptrace.syscall = syscall
    with handle._stopped(limit=1) as stopped:
        assert handle._syscall(stopped, SYS_GETPID, ()) == pid
    handle.close()


@pytest.mark.parametrize("die_after", [0, 1, 2, 3])  # a remote syscall makes 3 PTRACE_SYSCALL requests
def test_a_signal_sent_during_a_remote_system_call_is_delivered_whether_the_engine_lives_or_dies(
    sleeper: subprocess.Popen[bytes], die_after: int
) -> None:
    child = os.fork()
    if child == 0:  # the engine
        code = 1
        try:
            _engine(sleeper.pid, die_after)
            code = 0
        finally:
            os._exit(code)
    _unused, status = os.waitpid(child, 0)
    assert os.WEXITSTATUS(status) == (99 if die_after else 0)
    assert sleeper.stdout is not None
    ready, _w, _x = select.select([sleeper.stdout], [], [], 10)
    assert ready, "SIGUSR1 was lost: its handler never ran"
    assert os.read(sleeper.stdout.fileno(), 1) == b"u"
    assert sleeper.poll() is None, "the process died"
    with open(f"/proc/{sleeper.pid}/status") as status_file:
        assert "\nTracerPid:\t0\n" in status_file.read()
