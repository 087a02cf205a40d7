# Copyright: rebootless.windows contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Options shared by every module that runs the rebootless host engine."""

from __future__ import annotations


class ModuleDocFragment:
    """Where the engine lives on the host and which Python runs it."""

    DOCUMENTATION = r"""
options:
  engine_dir:
    description:
      - Directory on the host where the engine zipapp and transferred packages are cached, each named by its
        SHA-256, so repeated runs transfer nothing.
      - Defaults to C(C:\ProgramData\rebootless) on Windows hosts (PowerShell or cmd shell) and
        C(/var/lib/rebootless) on POSIX hosts (for example Wine hosts reached with the local connection).
      - On Windows hosts this directory must already exist for changing runs; the C(rebootless.windows.engine)
        role creates it with an ACL for Administrators and SYSTEM only. The module does not create it there,
        so it never ends up with the looser ACL inherited from C(C:\ProgramData).
    type: str
  python:
    description:
      - Path of the Python interpreter (3.8 or later) on the host that runs the engine.
      - Defaults to C(<engine_dir>\python\python.exe) on Windows hosts (the runtime the
        C(rebootless.windows.engine) role installs) and to C(ansible_python_interpreter) (else the
        discovered interpreter, else C(/usr/bin/python3)) on POSIX hosts.
    type: str
  state_dir:
    description:
      - Engine state directory on the host (journal, lock, staged-module records).
      - Defaults to the engine's own default, C(C:\ProgramData\rebootless\state) on Windows and
        C(/var/lib/rebootless/state) elsewhere.
    type: str
notes:
  - The engine zipapp is built on the controller from this collection (with C(pefile)), transferred only when
    the host does not hold a file with its SHA-256 under O(engine_dir), and run with O(python).
  - The engine must be able to open the target processes. On Windows it runs as the connection user, which must be
    an Administrator (C(become) with C(runas) does not apply to it, and a warning says so); on POSIX hosts
    C(become) applies as usual.
  - Works over every connection that reaches the host (C(winrm), C(psrp), C(ssh) with the C(powershell) or
    C(cmd) shell, and C(local)/C(ssh) with C(sh) for Wine hosts).
"""
