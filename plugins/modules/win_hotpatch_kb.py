#!/usr/bin/python
# Copyright: rebootless.windows contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# Documentation only: the action plugin plugins/action/win_hotpatch_kb.py runs this module.

from __future__ import annotations

DOCUMENTATION = r"""
module: win_hotpatch_kb
short_description: Install a Microsoft KB without restart and say whether it hotpatched or needs a reboot
version_added: 0.1.0
description:
  - Opens the KB (C(.msu) or C(.cab)) on the host with C(expand.exe), finds the PE images that carry a hot patch
    table (load configuration C(HotPatchTableOffset)) and compares the base images each one names
    (C(OriginalTimeDateStamp), C(OriginalCheckSum)) with the installed system files, and reads the host's
    hotpatch readiness (VBS running, hotpatch enrolment, Arm64 CHPE, pending reboot). This predicts whether the
    KB will hotpatch or needs a reboot, with the reason.
  - Then installs it with C(DISM.exe /Online /Add-Package /NoRestart /Quiet) (never restarts the host), maps
    DISM's exit code, and verifies afterwards (UBR, pending-reboot state).
  - In check mode, only predicts; nothing is installed.
  - Hosts that end with RV(reboot_required) go to the cold path (reboot in the maintenance window); the
    C(rebootless.windows.hotpatch) role does that when C(hotpatch_kb) is set.
options:
  path:
    description:
      - Path of the KB file (C(.msu) or C(.cab)) on the host. Copy it there first, for example with
        M(ansible.windows.win_copy) or M(ansible.windows.win_get_url).
    type: str
    required: true
  system_dirs:
    description:
      - Directories where the installed counterparts of the KB's files are looked up (by file name).
      - Defaults to C(%SystemRoot%\System32).
    type: list
    elements: str
  log_path:
    description:
      - DISM log file on the host (C(/LogPath)); DISM's default log when not set.
    type: str
  timeout:
    description:
      - Seconds DISM may take before the engine gives up waiting (1 to 86400).
    type: int
    default: 7200
  lock_timeout:
    description:
      - Seconds the install waits for the host-wide engine lock held by another engine run (an apply, rollback or
        KB install by another playbook) before failing (exit code 6, naming the holder). From 0 to 86400.
      - The prediction in check mode takes no lock and never waits.
    type: int
    default: 30
extends_documentation_fragment:
  - rebootless.windows.engine
attributes:
  check_mode:
    description: Predicts only (C(kb_classify)); DISM does not run.
    support: full
  diff_mode:
    description: Nothing to show; the result says what changed.
    support: none
  platform:
    description: Windows hosts only (the KB patches Windows itself; Wine hosts are refused).
    platforms: windows
    support: full
notes:
  - Why DISM and not C(wusa.exe) - DISM takes both C(.msu) and C(.cab) and works in remote sessions (WinRM,
    PSRP, SSH); C(wusa.exe) goes through the Windows Update agent, which refuses remote sessions.
  - Exit codes - C(0) installed; C(3010), C(1641), C(0x80070BC2) and C(0x240005) installed, restart needed;
    C(0x240006) already installed; C(0x80240017) and C(0x800F081E) not applicable (no change, not a failure);
    C(0x800F0922), C(0x800F081F), C(0x800F0823), C(0x800F0826), C(0x800F0827), C(0x800F0828), C(0x800F0831),
    access denied and others fail the task with what to do.
  - Cumulative updates ship most files as deltas (C(PA30)) against the installed version; those are listed in
    C(unclassified) in RV(predicted), not guessed. DISM's exit code and the pending-reboot state after the install
    decide RV(result).
  - Enrolment is read from the host (the C(Hotpatch.<arch>) targeting key, C(HotPatchTableSize),
    C(AllowRebootlessUpdates)); whether Microsoft offers hotpatches to the host also depends on licensing that
    the host cannot show.
seealso:
  - module: rebootless.windows.win_hotpatch_facts
  - module: ansible.windows.win_reboot
author:
  - rebootless.windows maintainers (@rebootless-windows)
"""

EXAMPLES = r"""
- name: Copy the KB to the host
  ansible.windows.win_copy:
    src: files/windows11.0-kb5099999-x64.msu
    dest: C:\ProgramData\rebootless\kb\

- name: Predict only
  rebootless.windows.win_hotpatch_kb:
    path: C:\ProgramData\rebootless\kb\windows11.0-kb5099999-x64.msu
  check_mode: true
  register: prediction

- name: Install without restart
  rebootless.windows.win_hotpatch_kb:
    path: C:\ProgramData\rebootless\kb\windows11.0-kb5099999-x64.msu
    log_path: C:\Windows\Logs\rebootless-kb5099999.log
  register: kb

- name: Reboot only the hosts that need it
  ansible.windows.win_reboot:
  when: kb.reboot_required
"""

RETURN = r"""
result:
  description:
    - C(hotpatched) (installed, no restart pending), C(needs_reboot), C(already_installed), C(not_applicable),
      C(failed); in check mode C(would_hotpatch), C(would_needs_reboot), C(would_no_change), C(would_unknown).
  returned: always
  type: str
  sample: hotpatched
hotpatched:
  description: The KB is installed and nothing asks for a restart.
  returned: always
  type: bool
  sample: true
reboot_required:
  description: The host needs a restart to finish (or, in check mode, is predicted to).
  returned: always
  type: bool
  sample: false
predicted:
  description:
    - The prediction made before installing; C(verdict) is C(hotpatch), C(needs_reboot), C(no_change) or
      C(unknown), with C(reasons), C(blockers) (host readiness), C(counts) per file kind, C(files) (each with
      C(name), C(kind), C(reason), C(installed) identity and the C(bases) a hotpatch image names) and the
      C(unclassified) file names.
  returned: when the KB could be opened
  type: dict
  sample: {"verdict": "hotpatch", "reasons": ["hotpatches ntoskrnl.exe"], "blockers": [],
           "counts": {"hotpatch": 1, "covered": 1}, "files": [], "unclassified": []}
ubr_before:
  description: Update build revision before the install.
  returned: always
  type: int
  sample: 2894
ubr_after:
  description: Update build revision after the install (null when nothing was installed).
  returned: always
  type: int
  sample: 2965
pending_reboot_reasons:
  description: Why a reboot is pending after the install (before it in check mode).
  returned: always
  type: list
  elements: str
  sample: ["component_servicing"]
hotpatch_blockers:
  description: Why this host cannot take a hotpatch at all (VBS, enrolment, CHPE, pending reboot).
  returned: always
  type: list
  elements: str
  sample: []
dism:
  description: The DISM run - C(argv), C(rc), C(symbol), C(result), C(message), C(log_path).
  returned: when DISM ran
  type: dict
  sample: {"rc": 3010, "symbol": "ERROR_SUCCESS_REBOOT_REQUIRED", "result": "reboot_required"}
reasons:
  description: Human-readable reasons for RV(result).
  returned: always
  type: list
  elements: str
  sample: ["installed with no restart pending; UBR 2894 -> 2965"]
os:
  description: OS facts after the install (before it in check mode) - product_name, current_build, ubr,
    os_build, vbs, enrolment, pending_reboot.
  returned: always
  type: dict
  sample: {"os_build": "26100.2965", "vbs": "running", "enrolment": "enrolled"}
engine_version:
  description: Version of the engine that answered.
  returned: always
  type: str
  sample: 0.1.0
engine_rc:
  description: Exit code of the engine (0 on success, 1 when the KB did not install).
  returned: always
  type: int
  sample: 0
"""
