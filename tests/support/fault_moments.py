"""Which named fault steps a real engine run can reach with a given package (see host/faults.py STEPS)."""

from __future__ import annotations

from pathlib import Path

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.host.jumpwrites import jumps_in_one_page
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.package import read_package


def moment_exists(step: str, package: Path) -> bool:
    """``apply_after_padding`` (a long jump written, its short jump not) exists only for a function whose two
    jumps straddle a page boundary: any other function is switched with one write. Every other step exists."""
    if step != "apply_after_padding":
        return True
    return any(not jumps_in_one_page(f.base_rva) for f in read_package(str(package)).manifest.functions)
