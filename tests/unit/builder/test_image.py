"""PE identity and function table (plugins/module_utils/hotpatch/image.py) over real Wine DLLs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch import image
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.errors import ImageError

WINE_DLL = Path("/usr/lib/x86_64-linux-gnu/wine/x86_64-windows/kernel32.dll")
needs_wine = pytest.mark.skipif(not WINE_DLL.exists(), reason="Wine's x86_64 DLLs are not installed")


@needs_wine
def test_pin_from_file_hashes_the_whole_file_and_reads_header_fields() -> None:
    pin = image.pin_from_file(str(WINE_DLL))
    fields = image.header_fields(WINE_DLL.read_bytes()[:4096])
    assert pin.name == "kernel32.dll"
    assert pin.machine == image.MACHINE_AMD64
    assert (pin.time_date_stamp, pin.size_of_image, pin.checksum, pin.image_base) == (
        fields.time_date_stamp,
        fields.size_of_image,
        fields.checksum,
        fields.image_base,
    )
    import hashlib

    assert pin.sha256 == hashlib.sha256(WINE_DLL.read_bytes()).hexdigest()


@needs_wine
def test_pin_matches_accepts_its_own_header_and_names_the_first_mismatch() -> None:
    pin = image.pin_from_file(str(WINE_DLL))
    fields = image.header_fields(WINE_DLL.read_bytes()[:4096])
    assert image.pin_matches(pin, fields) is None
    other = dataclasses.replace(fields, time_date_stamp=fields.time_date_stamp + 1)
    reason = image.pin_matches(pin, other)
    assert reason is not None and "TimeDateStamp" in reason and "cold path" in reason


@needs_wine
def test_function_ranges_are_sorted_and_inside_the_image() -> None:
    data = WINE_DLL.read_bytes()
    pe = image.load_pe(data)
    ranges = image.function_ranges(pe)
    assert ranges == sorted(ranges) and len(ranges) > 100
    size = image.header_fields(data).size_of_image
    assert all(0 < begin < end <= size and 0 < unwind < size for begin, end, unwind in ranges)


@pytest.mark.parametrize("blob", [b"", b"MZ" + b"\0" * 100, b"not a pe at all" * 10])
def test_header_fields_refuses_what_is_not_a_pe_header(blob: bytes) -> None:
    with pytest.raises(ImageError):
        image.header_fields(blob)


def test_pin_from_file_reports_an_unreadable_path(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="cannot read module"):
        image.pin_from_file(str(tmp_path / "missing.dll"))
