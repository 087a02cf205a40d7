"""Die inside a remote system call or remote call of the Wine backend, as a SIGKILLed engine would.

    python -m tests.support.remote_death PID MODULE_BASE_HEX syscall|call

Opens the Wine process PID with the engine's Wine backend and exits (``os._exit(99)``, no cleanup) at the
moment the borrowed thread holds the call's registers: ``syscall`` right before the single step of the remote
mmap that allocate_near runs, ``call`` right before the thread is let run into RtlAddFunctionTable. A real
engine killed by SIGKILL at that moment leaves the thread in the same state.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import conftest  # noqa: F401  # pylint: disable=unused-import
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.backends import _ptrace
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.backends.wine import WineBackend

__all__ = ["main"]


def _die(*_args: object) -> NoReturn:
    os._exit(99)


def main(argv: list[str]) -> int:
    pid, base, where = int(argv[0]), int(argv[1], 16), argv[2]
    handle = WineBackend().open(pid)
    if where == "syscall":
        _ptrace.singlestep = _die  # type: ignore[assignment]
        handle.allocate_near(base, 4096)
    elif where == "call":
        address = handle.allocate_near(base, 4096)
        _ptrace.cont = _die  # type: ignore[assignment]
        handle.add_function_table(address, 0, base)
    else:
        print(f"unknown place {where!r}: use syscall or call", file=sys.stderr)
        return 2
    print("the remote operation finished without dying", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
