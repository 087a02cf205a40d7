#!/usr/bin/python
# Copyright: rebootless.windows contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# Documentation only: the action plugin plugins/action/hotpatch_build.py does the work on the controller.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: hotpatch_build
short_description: Build a hotpatch package from a base and a patched build of a Windows PE module
version_added: 0.1.0
description:
  - Compares two builds of one DLL or EXE - O(base), the build running on the hosts, and O(patched), the fixed build -
    and writes a hotpatch package to O(dest) for C(rebootless.windows.win_hotpatch).
  - Functions are matched by name (COFF symbol table of mingw-w64 builds, a linker map file, exports); their code is
    compared with every address normalised to what it names, so code that only moved is not patched. Changed and
    new functions are relocated into one code blob together with their unwind information.
  - Changes a running process cannot take are refused with a reason - changed layout or initial value of writable
    data, new writable data, functions without a hotpatchable entry (2-byte first instruction and 5 bytes of CC or
    NOP padding), references that cannot be bound to the base image (for example a new import), changed TLS or
    static constructors, another machine type. With O(cold_only_ok) such a patch still gives a cold-only package
    (the full patched module, for a restart or reboot); otherwise the task fails and lists the refusals.
  - The same inputs always give a byte-identical package; O(dest) is only rewritten when its content would change.
  - Runs on the controller only; use it in a play on C(localhost). The same builder is available from the command
    line as C(scripts/hotpatch-build) (see docs/builder.md).
author:
  - rebootless.windows maintainers (@rebootless-windows)
options:
  base:
    description: Path of the module as deployed (the base image the package will be pinned to).
    type: path
    required: true
  patched:
    description: Path of the fixed build of the same module.
    type: path
    required: true
  dest:
    description: Where to write the package.
    type: path
    required: true
  package_id:
    description: Package id (letters, digits and C(._+-), at most 128).
    type: str
    required: true
  version:
    description: Package version (letters, digits and C(._+-), at most 128).
    type: str
    required: true
  description:
    description: Free text for operators.
    type: str
    default: ""
  base_map:
    description: Linker C(/map) file of the base build, for builds without a COFF symbol table (clang or MSVC with lld-link or link.exe).
    type: path
    aliases: [base_symbols]
  patched_map:
    description: Linker C(/map) file of the patched build.
    type: path
    aliases: [patched_symbols]
  module_name:
    description: File name the module is loaded as on the hosts; defaults to the base file's name.
    type: str
  cold_only_ok:
    description: When something cannot be hotpatched, write a cold-only package (C(hotpatchable=false)) instead of failing.
    type: bool
    default: false
attributes:
  check_mode:
    description: Builds the package in memory and reports whether O(dest) would change, without writing it.
    support: full
  diff_mode:
    description: Shows the SHA-256 of O(dest) before and after.
    support: full
  platform:
    description: Runs on the controller (Linux or macOS), whatever host the task targets.
    platforms: posix
    support: full
notes:
  - The action runs on the controller whatever host the task targets.
  - Signing is a separate step; the package this module writes is unsigned.
seealso:
  - module: rebootless.windows.win_hotpatch
"""

EXAMPLES = r"""
- name: Build the appcore fix
  rebootless.windows.hotpatch_build:
    base: builds/1.4.0/appcore.dll
    patched: builds/1.4.1/appcore.dll
    dest: packages/appcore-1.4.1.hpk
    package_id: appcore-get-bounds
    version: 1.4.1
    description: GET handler bounds check
  delegate_to: localhost
  register: fix

- name: Build from clang/lld-link builds, accepting a cold-only package
  rebootless.windows.hotpatch_build:
    base: builds/1.4.0/appcore.dll
    patched: builds/1.4.1/appcore.dll
    base_map: builds/1.4.0/appcore.map
    patched_map: builds/1.4.1/appcore.map
    dest: packages/appcore-1.4.1.hpk
    package_id: appcore-get-bounds
    version: 1.4.1
    cold_only_ok: true
  delegate_to: localhost
"""

RETURN = r"""
dest:
  description: Path of the package.
  returned: success
  type: str
sha256:
  description: SHA-256 of the package bytes (hex).
  returned: success
  type: str
hotpatchable:
  description: Whether the package hotpatches running processes (false - cold-only, or nothing changed).
  returned: always
  type: bool
patched:
  description: Base-image functions the package redirects.
  returned: success
  type: list
  elements: str
  sample: [parse_get]
new:
  description: Functions only the patched build has, carried in the code blob.
  returned: success
  type: list
  elements: str
refused:
  description: Every change the builder would not hotpatch, with a reason a human can act on.
  returned: always
  type: list
  elements: dict
  contains:
    function:
      description: Function, data object or feature (for example C(TLS)) concerned.
      type: str
    reason:
      description: Why, and what to do about it.
      type: str
  sample: [{function: weights, reason: "writable data weights changed size (32 -> 40 bytes); ..."}]
package_id:
  description: The package id written into the manifest.
  returned: success
  type: str
version:
  description: The package version written into the manifest.
  returned: success
  type: str
module:
  description: Module file name the package is pinned to.
  returned: success
  type: str
"""
