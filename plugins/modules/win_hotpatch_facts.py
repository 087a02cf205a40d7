#!/usr/bin/python
# Copyright: rebootless.windows contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# Documentation only: the action plugin plugins/action/win_hotpatch_facts.py runs this module.

from __future__ import annotations

DOCUMENTATION = r"""
module: win_hotpatch_facts
short_description: Hotpatch facts of a Windows host - platform, OS build, pending reboot, applied packages
version_added: 0.1.0
description:
  - Runs the rebootless engine's read-only C(inspect) verb on the host and returns its findings as
    C(ansible_facts.hotpatch).
  - With O(module), also lists the running processes that load that module.
  - The engine zipapp is transferred only when the host does not already hold it (by SHA-256); when
    O(engine_dir) does not exist on the host, it runs from the task's temporary directory and leaves nothing.
options:
  module:
    description:
      - File name of a module (for example C(appcore.dll)); list the processes that load it.
    type: str
extends_documentation_fragment:
  - rebootless.windows.engine
attributes:
  check_mode:
    description: Read-only; runs the same in check mode.
    support: full
  diff_mode:
    description: Nothing to show; returns facts only.
    support: none
  platform:
    description: Windows hosts, and Windows programs hosted by Wine on Linux.
    platforms: windows
    support: full
  facts:
    description: Returns C(ansible_facts.hotpatch).
    support: full
seealso:
  - module: rebootless.windows.win_hotpatch
author:
  - rebootless.windows maintainers (@rebootless-windows)
"""

EXAMPLES = r"""
- name: Gather hotpatch facts and the processes that load appcore.dll
  rebootless.windows.win_hotpatch_facts:
    module: appcore.dll

- name: Send hosts with a pending reboot to the cold path
  ansible.builtin.debug:
    msg: "{{ inventory_hostname }} must reboot: {{ ansible_facts.hotpatch.pending_reboot_reasons | join(', ') }}"
  when: ansible_facts.hotpatch.pending_reboot
"""

RETURN = r"""
ansible_facts:
  description: Facts added to the host.
  returned: always
  type: dict
  contains:
    hotpatch:
      description:
        - What the engine found. Keys the engine cannot determine on a platform are null (for example
          C(vbs) and C(enrolment) on Wine hosts).
      returned: always
      type: dict
      contains:
        platform:
          description: Engine backend for this host, C(windows) or C(wine).
          type: str
          sample: windows
        engine_version:
          description: Version of the engine that answered.
          type: str
          sample: 0.1.0
        os_product:
          description: Windows product name, null when unknown.
          type: str
          sample: Windows Server 2025 Datacenter
        os_build:
          description: Windows build number (CurrentBuild), null when unknown.
          type: str
          sample: "26100"
        os_ubr:
          description: Update build revision (UBR), null when unknown.
          type: int
          sample: 1742
        os_edition:
          description: Windows edition (EditionID), null when unknown.
          type: str
          sample: ServerDatacenter
        os_display_version:
          description: Windows display version (DisplayVersion), null when unknown.
          type: str
          sample: 24H2
        wine_version:
          description: Wine version on Wine hosts, null elsewhere.
          type: str
          sample: wine-8.0
        kernel:
          description: Linux kernel release on Wine hosts, null elsewhere.
          type: str
          sample: 6.1.0-18-amd64
        hostname:
          description: Host name as the engine sees it.
          type: str
          sample: web01
        python_version:
          description: Version of the Python that runs the engine.
          type: str
          sample: 3.12.7
        vbs:
          description:
            - Virtualization-based security on Windows hosts, null when unknown (Wine hosts).
            - C(running), C(enabled) (configured but not running) or C(off) from WMI
              (C(Win32_DeviceGuard.VirtualizationBasedSecurityStatus) 2, 1, 0); C(configured) or C(off) from the
              registry when WMI could not be asked. Hotpatches need C(running).
          type: str
          sample: running
        vbs_status:
          description: The WMI C(VirtualizationBasedSecurityStatus) number, null without WMI.
          type: int
          sample: 2
        enrolment:
          description:
            - Hotpatch enrolment for Microsoft hotpatch updates, C(enrolled) or C(not_enrolled); null when unknown.
            - C(enrolled) when the C(Hotpatch.<arch>) targeting package is installed (Windows Server) or the
              C(AllowRebootlessUpdates) policy is 1 (Windows 11 Enterprise).
          type: str
          sample: enrolled
        hotpatch_enrolment:
          description:
            - The enrolment evidence, null when unknown - C(state), C(arch) (C(amd64)/C(arm64)), C(package_name)
              and C(package_version) of the targeting key, C(hotpatch_table_size) (bytes),
              C(rebootless_policy) (bool or null) and C(chpe_disabled) (Arm64 C(HotPatchRestrictions=1); null on
              amd64).
          type: dict
          sample: {"state": "enrolled", "arch": "amd64", "package_name": "Hotpatch Enrollment Package",
                   "package_version": "10.0.26100.2894", "hotpatch_table_size": 4096, "rebootless_policy": null,
                   "chpe_disabled": null}
        hotpatch_ready:
          description: Whether this host can take a Microsoft hotpatch KB now; null when unknown (Wine hosts).
          type: bool
          sample: true
        hotpatch_blockers:
          description: Why it cannot (VBS, enrolment, CHPE, pending reboot), each with what to do; empty otherwise.
          type: list
          elements: str
          sample: []
        pending_reboot:
          description: Whether a reboot is pending, null when the engine cannot tell.
          type: bool
          sample: false
        pending_reboot_reasons:
          description:
            - Why a reboot is pending - C(component_servicing) (CBS RebootPending), C(windows_update)
              (RebootRequired), C(computer_rename), C(domain_join); empty when none or unknown.
          type: list
          elements: str
          sample: []
        pending_reboot_optional:
          description:
            - Weak evidence reported but not counted in RV(ansible_facts.hotpatch.pending_reboot) - C(file_rename_operations) (a non-empty
              PendingFileRenameOperations, which installers leave behind without needing a reboot).
          type: list
          elements: str
          sample: []
        applied:
          description: Packages applied per the engine journal, as the engine records them.
          type: list
          elements: dict
          sample: [{"id": "appcore-cve-fix", "version": "2.0.0", "pids": [4242]}]
        staged:
          description: Module files staged on disk by the cold path, as the engine records them.
          type: list
          elements: dict
          sample: []
        module:
          description: The O(module) asked about, or null.
          type: str
          sample: appcore.dll
        processes:
          description: Processes that load O(module) (empty when O(module) is not set).
          type: list
          elements: dict
          sample: [{"pid": 4242, "windows_pid": null, "name": "appsvc.exe", "start_time": "133700000000000000",
                    "module_path": "C:\\Program Files\\AppSvc\\appcore.dll"}]
engine_rc:
  description: Exit code of the engine (0 on success).
  returned: always
  type: int
  sample: 0
"""
