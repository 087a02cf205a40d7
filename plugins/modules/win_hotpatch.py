#!/usr/bin/python
# Copyright: rebootless.windows contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# Documentation only: the action plugin plugins/action/win_hotpatch.py runs this module.

from __future__ import annotations

DOCUMENTATION = r"""
module: win_hotpatch
short_description: Hotpatch running Windows processes without a reboot, roll back, or stage the cold path
version_added: 0.1.0
description:
  - Applies a rebootless hotpatch package to every running process that loads the package's module, rolls it
    back, or stages the patched module on disk (the cold path) for the next restart.
  - The package is verified on the controller (structure, member SHA-256, signature against O(trusted_keys))
    before anything is sent, and again by the engine on the host, which also checks that each process runs the
    pinned base image.
  - The engine zipapp and the package are transferred only when the host does not already hold a file with the
    same SHA-256 under O(engine_dir); one command asks the host for those digests first.
  - In check mode the engine's C(plan) reports what would happen per process and nothing on the host changes;
    in diff mode each process's code before and after (C(base), C(patched) or C(unknown)) is shown.
options:
  package:
    description:
      - Hotpatch package (C(.hpk)) built by M(rebootless.windows.hotpatch_build).
      - A path on the controller (absolute, or relative to the role's or playbook's C(files/) directory); with
        O(remote_src=true), a path on the host.
    type: str
    required: true
  remote_src:
    description:
      - Whether O(package) is a path on the host. Then it is not transferred, and only the engine checks it.
    type: bool
    default: false
  state:
    description:
      - V(present) hotpatches every matching process (engine C(apply)); a process that already runs this package's
        code is left alone, so a second run reports C(changed=false).
      - V(absent) rolls this package back in every process from the engine's journal (engine C(rollback)).
      - V(staged) puts the patched module on disk for new processes, renaming the original aside (engine C(stage));
        the cold path when processes cannot be hotpatched. Restart the service or reboot afterwards.
      - V(unstaged) restores the original module file kept aside by V(staged) (engine C(unstage)).
    type: str
    choices: [present, absent, staged, unstaged]
    default: present
  processes:
    description:
      - Restrict the change to these processes; by default every process that loads the package's module.
    type: dict
    suboptions:
      names:
        description: Executable file names, compared case-insensitively (for example C(appsvc.exe)).
        type: list
        elements: str
      pids:
        description: Process ids (the Windows PID; on Wine hosts the Linux PID also matches).
        type: list
        elements: int
  activeness_check:
    description:
      - Refuse a process while any of its threads has a return address inside a function the package replaces
        (the engine walks every stopped thread's stack), instead of relying on the old code being safe to finish.
    type: bool
    default: false
  retries:
    description:
      - How many times the engine stops a process's threads again when one was stopped inside the bytes it must
        write, before it refuses that process. From 0 to 1000.
    type: int
    default: 5
  retry_delay_ms:
    description: Milliseconds the threads run between two such attempts. From 0 to 60000.
    type: int
    default: 20
  lock_timeout:
    description:
      - Seconds to wait for the host-wide engine lock held by another engine run before failing (exit code 6).
        From 0 to 86400.
    type: int
    default: 30
  allow_unsigned:
    description:
      - Accept a package that carries no signature. Only for tests and lab hosts.
      - A package that is signed must still verify with one of O(trusted_keys); a bad signature is never accepted.
    type: bool
    default: false
  trusted_keys:
    description:
      - Base64 Ed25519 public keys whose signature over the package manifest the engine accepts.
    type: list
    elements: str
  module_path:
    description:
      - Path on the host of the module file that O(state=staged) replaces and O(state=unstaged) restores.
      - Defaults to the path the engine finds loaded in the matching processes.
    type: str
  replace_other_build:
    description:
      - With O(state=staged), replace the module on disk even when it is another build than the package's base
        image. A host whose build the hotpatch cannot apply to is the case the cold path exists for.
      - The file replaced must still be a PE image for the package's machine; its SHA-256 is journaled and
        O(state=unstaged) puts that very file back.
      - Without it, staging over anything but the base image fails and changes nothing.
    type: bool
    default: false
  workers:
    description:
      - How many processes the engine patches (O(state=present)), rolls back (O(state=absent)) or plans (check mode)
        at once, each wholly in one engine thread; never more threads than matching processes. From 1 to 64.
      - V(1) handles one process after the other. Results come in PID order either way.
      - Ignored with O(state=staged) and O(state=unstaged).
    type: int
    default: 8
extends_documentation_fragment:
  - rebootless.windows.engine
attributes:
  check_mode:
    description: Runs the engine's C(plan) (or C(status) for O(state=staged)/O(state=unstaged)); the host is not changed.
    support: full
  diff_mode:
    description: Shows, per process, which code it runs before and after.
    support: full
  platform:
    description: Windows hosts, and Windows programs hosted by Wine on Linux.
    platforms: windows
    support: full
seealso:
  - module: rebootless.windows.win_hotpatch_facts
  - module: rebootless.windows.hotpatch_build
notes:
  - Exit codes of the engine become task failures with the engine's message; when some processes were patched
    and others refused, the task fails and RV(processes) says which and why; RV(cold_patch_required) tells
    whether a restart with the staged module would fix the rest.
  - Temporary files (the request document and anything transferred for check mode) are removed at the end.
author:
  - rebootless.windows maintainers (@rebootless-windows)
"""

EXAMPLES = r"""
- name: Hotpatch every process that loads appcore.dll
  rebootless.windows.win_hotpatch:
    package: files/appcore-cve-fix-2.0.0.hpk
    trusted_keys:
      - "{{ rebootless_trusted_key }}"
  register: patched

- name: Only these services, refusing any process that is running inside a patched function
  rebootless.windows.win_hotpatch:
    package: files/appcore-cve-fix-2.0.0.hpk
    processes:
      names: [appsvc.exe]
    activeness_check: true
    trusted_keys: "{{ rebootless_trusted_keys }}"

- name: What would happen (check mode), with per-process code before and after
  rebootless.windows.win_hotpatch:
    package: files/appcore-cve-fix-2.0.0.hpk
    trusted_keys: "{{ rebootless_trusted_keys }}"
  check_mode: true
  diff: true

- name: Roll the package back everywhere it is applied
  rebootless.windows.win_hotpatch:
    package: files/appcore-cve-fix-2.0.0.hpk
    state: absent
    trusted_keys: "{{ rebootless_trusted_keys }}"

- name: Cold path - put the patched module on disk, then restart the service in the maintenance window
  rebootless.windows.win_hotpatch:
    package: C:\Patches\appcore-cve-fix-2.0.0.hpk
    remote_src: true
    state: staged
    trusted_keys: "{{ rebootless_trusted_keys }}"
  when: patched.cold_patch_required
"""

RETURN = r"""
state:
  description: The requested O(state).
  returned: always
  type: str
  sample: present
package:
  description: The package as the engine (else the controller) read it.
  returned: always
  type: dict
  contains:
    id:
      description: Package id from the manifest.
      type: str
      sample: appcore-cve-fix
    module:
      description: File name of the module it patches.
      type: str
      sample: appcore.dll
    version:
      description: Package version.
      type: str
      sample: 2.0.0
    sha256:
      description: SHA-256 of the package file.
      type: str
      sample: 3f5c0a8e9d2b4c1f00aa11bb22cc33dd44ee55ff66778899aabbccddeeff0011
processes:
  description: One entry per process the engine considered.
  returned: always
  type: list
  elements: dict
  contains:
    pid:
      description: Process id (on Wine hosts, the Linux PID).
      type: int
      sample: 4242
    windows_pid:
      description: The Windows PID when it differs from RV(processes[].pid) (Wine hosts), else null.
      type: int
      sample: 32
    name:
      description: Executable file name.
      type: str
      sample: appsvc.exe
    result:
      description:
        - C(patched), C(already_patched), C(rolled_back), C(not_patched), C(would_patch), C(would_roll_back),
          C(refused) or C(failed).
      type: str
      sample: patched
    pause_us:
      description: Microseconds the process's threads were stopped for the switch; null when not stopped.
      type: int
      sample: 180
    reason:
      description: Why the process was refused or failed (what to do about it), else null.
      type: str
      sample: "appcore.dll is not the pinned base image (TimeDateStamp differs): use the cold path"
    code_before:
      description: Code the process ran before this task, C(base), C(patched) or C(unknown).
      type: str
      sample: base
    code_after:
      description: Code the process runs after this task (in check mode, would run), C(base), C(patched) or C(unknown).
      type: str
      sample: patched
    functions:
      description: Number of functions redirected (or restored) in the process.
      type: int
      sample: 3
cold_patch_required:
  description:
    - Whether the package is cold-only or a process could not be hotpatched for a reason a restart with the staged
      module would fix (base-image mismatch, refusal).
  returned: always
  type: bool
  sample: false
reasons:
  description: Human-readable reasons, one per refused or failed process.
  returned: always
  type: list
  elements: str
  sample: ["appsvc.exe (pid 4242): a thread stayed inside fee after 5 attempts; retry later or use activeness_check"]
journal:
  description: Path on the host of the engine journal record for this run, or null.
  returned: always
  type: str
  sample: C:\ProgramData\rebootless\state\journal\appcore-cve-fix-4242.json
staged:
  description: Module files put on disk or restored by O(state=staged) or O(state=unstaged).
  returned: always
  type: list
  elements: dict
  sample:
    - path: C:\Program Files\AppSvc\appcore.dll
      backup: C:\Program Files\AppSvc\appcore.dll.rebootless-3f5c0a8e9d2b
      package: appcore-cve-fix
      version: 2.0.0
      state: staged
      sha256_before: 9b2e61c4d1f0a7e35c8d4b6a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e
      sha256_after: 1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809
engine_version:
  description: Version of the engine that ran.
  returned: always
  type: str
  sample: 0.1.0
platform:
  description: Backend the engine used, C(windows) or C(wine).
  returned: always
  type: str
  sample: windows
engine_rc:
  description: Exit code of the engine (0 success, 1 some processes failed or were refused, 2 bad request,
    3 package rejected, 4 signature rejected, 5 image rejected, 6 host lock busy, 7 platform failure,
    8 journal needs an operator).
  returned: always
  type: int
  sample: 0
"""
