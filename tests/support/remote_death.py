"""Die inside a remote system call or remote call of the Wine backend, as a SIGKILLed engine would.

    python -m tests.support.remote_death PID MODULE_BASE_HEX syscall|call STEP before|after

Opens the Wine process PID with the engine's Wine backend and counts the ptrace requests that drive the
borrowed thread (PTRACE_SYSCALL, PTRACE_SETREGS, PTRACE_SETREGSET, PTRACE_SETSIGMASK, PTRACE_INTERRUPT, PTRACE_CONT) from the start of the operation: the remote
mmap that allocate_near runs (``syscall``), or everything add_function_table does (``call``: the stub's mmap,
the call into RtlAddFunctionTable, the stub's munmap). At request number STEP it exits (``os._exit(99)``, no
cleanup) either ``before`` making it or right ``after`` it (then the thread is running, or stopped with the new
state). Exit 1 when the operation has fewer than STEP requests (the walk is over), 2 on bad arguments.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import conftest  # noqa: F401  # pylint: disable=unused-import
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.backends import _ptrace
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.backends.wine import WineBackend
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.errors import BackendError

__all__ = ["main"]

DRIVING = ("syscall", "set_regs", "set_xstate", "set_sigmask", "interrupt", "cont")


def arm(step: int, after: bool) -> Callable[[], None]:
    """Count the driving requests from now on; returns the function that stops counting."""
    count = [0]
    armed = [True]
    originals = {name: getattr(_ptrace, name) for name in DRIVING}

    def wrap(real: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any) -> Any:
            if not armed[0]:
                return real(*args)
            count[0] += 1
            if count[0] == step and not after:
                os._exit(99)
            out = real(*args)
            if count[0] == step:
                os._exit(99)
            return out

        return counted

    for name, real in originals.items():
        setattr(_ptrace, name, wrap(real))

    def disarm() -> None:
        armed[0] = False

    return disarm


def main(argv: list[str]) -> int:
    if len(argv) != 5 or argv[2] not in ("syscall", "call") or argv[4] not in ("before", "after"):
        print(__doc__, file=sys.stderr)
        return 2
    pid, base, where, step, after = int(argv[0]), int(argv[1], 16), argv[2], int(argv[3]), argv[4] == "after"
    handle = WineBackend().open(pid)
    if where == "syscall":
        disarm = arm(step, after)
        address = handle.allocate_near(base, 4096)
        disarm()
    else:
        address = handle.allocate_near(base, 4096)
        disarm = arm(step, after)
        try:
            handle.add_function_table(address, 0, base)
        except BackendError as exc:  # a zero-entry table may be refused; the walk only needs the requests
            print(f"add_function_table: {exc}", file=sys.stderr)
        disarm()
    print(f"the remote {where} finished in fewer than {step} requests", file=sys.stderr)
    handle.free(address, 4096)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
