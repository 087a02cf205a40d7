#!/usr/bin/python
# Copyright: rebootless.windows contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# Documentation only: the action plugin plugins/action/hotpatch_report.py does the work on the controller.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: hotpatch_report
short_description: Write the hotpatch run report (JSON, Markdown, HTML, JUnit) on the controller
version_added: 0.1.0
description:
  - Collects every host's C(hotpatch_record) (set by the C(rebootless.windows.hotpatch) role) and writes the run report
    into O(dest) - C(hotpatch-report.json), C(hotpatch-report.md), C(hotpatch-report.html) (self-contained, with an inline
    SVG timeline of the waves and, when O(loadgen) is given, the load generator's latency and failures per second) and
    C(hotpatch-report.junit.xml) (one test case per host).
  - Per host - wave, decision and its reason, result, rolled back or not, the longest process pause, every health
    check with its phase and outcome, the maintenance window, phase durations. Per wave - hosts, failed hosts (result
    C(failed), the same rule as the totals), rolled-back hosts, and the hosts the wave gate counted (rolled back too
    unless C(hotpatch_rollback_is_failure=false)) with their share. Totals - hotpatched, cold-patched, deferred,
    skipped, failed, not run, rolled back.
  - Hosts without a record (unreachable, or not run because the rollout stopped) are reported C(not_run).
  - No secret reaches a file - keys naming credentials are masked and text matching common credential shapes or
    O(redact) is replaced by C(<redacted>).
  - Runs on the controller only. The files are run artifacts, so the task never reports a change; it writes them in
    check mode too (the report then says nothing was changed).
author:
  - rebootless.windows maintainers (@rebootless-windows)
options:
  hosts:
    description: Hosts of the run, in report order. Their records are read from C(hostvars) unless O(records) is given.
    type: list
    elements: str
  records:
    description: Host name to C(hotpatch_record) mapping, instead of reading C(hostvars).
    type: dict
  waves:
    description: Waves as recorded by C(playbooks/hotpatch.yml) - C({index, hosts, started, finished, failed, failed_percent}).
    type: list
    elements: dict
    default: []
  stopped:
    description: Why the rollout stopped early (empty when it did not).
    type: str
    default: ""
  dest:
    description: Folder for the report files (created).
    type: path
    required: true
  formats:
    description: Which files to write.
    type: list
    elements: str
    default: [json, markdown, html, junit]
    choices: [json, markdown, html, junit]
  loadgen:
    description: Load generator result (path to the JSON written by C(demo/loadgen.py --out), or the object itself) to chart.
    type: raw
  redact:
    description: Extra regular expressions whose matches are masked in every file.
    type: list
    elements: str
    default: []
  title:
    description: Report title.
    type: str
    default: Hotpatch rollout
attributes:
  check_mode:
    description: Writes the report in check mode too (it changes no host); the report says it was a check run.
    support: full
  diff_mode:
    description: Nothing to show.
    support: none
  platform:
    description: Runs on the controller only, whatever host the task targets.
    platforms: posix
    support: full
notes:
  - The action runs on the controller whatever host the task targets; use it in a play on C(localhost).
seealso:
  - module: rebootless.windows.win_hotpatch
"""

EXAMPLES = r"""
- name: Write the run report
  rebootless.windows.hotpatch_report:
    hosts: "{{ query('ansible.builtin.inventory_hostnames', 'windows') }}"
    waves: "{{ hostvars['localhost']['hotpatch_waves_run'] | default([]) }}"
    dest: /var/lib/awx/reports/hotpatch
  register: report

- name: Hand the totals to an AWX workflow
  ansible.builtin.set_stats:
    data:
      hotpatch_totals: "{{ report.totals }}"
"""

RETURN = r"""
files:
  description: Format name to absolute path of each file written.
  returned: always
  type: dict
  sample: {"json": "/tmp/r/hotpatch-report.json", "markdown": "/tmp/r/hotpatch-report.md"}
totals:
  description: Host counts by result (hotpatched, cold_patched, deferred, skipped, failed, not_run, would_*), plus
    rolled_back, changed, hosts and pause_us_max (longest process pause of a hotpatched host, microseconds).
  returned: always
  type: dict
  sample: {"hotpatched": 2, "cold_patched": 1, "deferred": 1, "failed": 0, "rolled_back": 1, "hosts": 4}
stopped:
  description: Why the rollout stopped early, or an empty string.
  returned: always
  type: str
waves:
  description: Number of waves that ran.
  returned: always
  type: int
"""
