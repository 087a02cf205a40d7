"""Read-only data a patch changes: functions that use it are patched and carry the new copy in their blob."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.package import read_package
from ansible_collections.rebootless.windows.plugins.plugin_utils._builder import BuildRequest, build
from tests.integration.test_builder_refusals import pair

pytestmark = [pytest.mark.wine, pytest.mark.integration]

SOURCE = """
__attribute__((used)) const long long weights_table[4] = {{11, 22, 33, {last}}};
HP long long lookup(long long x) {{ return weights_table[x & 3]; }}
HP long long unrelated(long long x) {{ return x * 5; }}
"""


def test_a_changed_const_table_patches_its_users_and_travels_in_the_blob(tmp_path: Path) -> None:
    base, patched = pair(tmp_path, SOURCE.format(last=44), SOURCE.format(last=4444))
    result = build(BuildRequest(str(base), str(patched), "table-fix", "1"))
    assert result.patched == ["lookup"] and result.refused == []
    blob = read_package(result.package).blob
    assert struct.pack("<4q", 11, 22, 33, 4444) in blob
    symbols = {r.symbol for r in result.manifest.relocations if r.target == "base"}
    assert "weights_table" not in symbols  # bound to the blob's copy, not the base's old table


def test_an_unchanged_const_table_stays_bound_to_the_base_image(tmp_path: Path) -> None:
    changed = SOURCE.replace("x * 5", "x * 6")
    base, patched = pair(tmp_path, SOURCE.format(last=44), changed.format(last=44))
    result = build(BuildRequest(str(base), str(patched), "table-fix", "1"))
    assert result.patched == ["unrelated"]
