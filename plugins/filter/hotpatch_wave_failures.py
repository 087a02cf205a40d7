# Copyright: rebootless.windows contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter ``rebootless.windows.hotpatch_wave_failures``: which hosts of a wave count as failed for the threshold.

``hosts | rebootless.windows.hotpatch_wave_failures(hostvars, rollback_is_failure=true)`` -> list of host names. A host
counts as failed when its ``hotpatch_record`` says ``failed``, when it has no record (unreachable, or the play
crashed before the role's record phase), or, with ``rollback_is_failure``, when its hotpatch was rolled back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["hotpatch_wave_failures", "is_failure"]


def is_failure(record: Any, rollback_is_failure: bool = True) -> bool:
    """True when one host's ``hotpatch_record`` (mapping or None) counts against the wave."""
    if not isinstance(record, Mapping) or not record:
        return True
    if record.get("result") == "failed":
        return True
    return bool(rollback_is_failure and record.get("rolled_back"))


def hotpatch_wave_failures(
    hosts: Iterable[str], hostvars: Mapping[str, Any], rollback_is_failure: bool = True
) -> list[str]:
    """Names of the failed hosts of ``hosts``, in order; ``hostvars`` is Ansible's hostvars (or any mapping)."""
    failed = []
    for host in hosts:
        record = None
        if host in hostvars:
            record = hostvars[host].get("hotpatch_record")
        if is_failure(record, bool(rollback_is_failure)):
            failed.append(str(host))
    return failed


class FilterModule:
    """Ansible entry point."""

    def filters(self) -> dict[str, Any]:
        return {"hotpatch_wave_failures": hotpatch_wave_failures}
