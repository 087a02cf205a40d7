"""Names for the builder: the COFF symbol table (incl. its long-name string table) and lld-link /map files."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.errors import ImageError
from ansible_collections.rebootless.windows.plugins.plugin_utils._builder.coff import read_coff_symbols
from ansible_collections.rebootless.windows.plugins.plugin_utils._builder.mapfile import read_map


def record(name: bytes, value: int, section: int, type_: int, storage: int, aux: int = 0) -> bytes:
    return struct.pack("<8sIhHBB", name, value, section, type_, storage, aux)


def long_name(offset: int) -> bytes:
    return b"\0\0\0\0" + struct.pack("<I", offset)


def table() -> bytes:
    strings = b"a_function_name_longer_than_eight\0shared_counter_name\0"
    records = [
        record(b".file", 0, -2, 0, 103, 1),
        b"unit.c".ljust(18, b"\0"),  # aux record: the source file name
        record(b".text", 0, 1, 0, 3, 1),  # section definition of this object's .text: 0x40 bytes
        struct.pack("<IHH", 0x40, 0, 0).ljust(18, b"\0"),
        record(long_name(4), 0x10, 1, 0x20, 2),  # external function with a long name
        record(b"short", 0x30, 1, 0x20, 3),  # static function
        record(long_name(4 + 34), 0x8, 2, 0, 2),  # external data with a long name
        record(b"extern", 0, 0, 0x20, 2),  # undefined: left out
        record(b"abs", 5, -1, 0, 2),  # absolute: left out
    ]
    return b"".join(records) + struct.pack("<I", 4 + len(strings)) + strings


def test_coff_table_gives_long_and_short_names_with_their_section_offsets() -> None:
    data = b"\x90" * 64 + table()
    symbols = read_coff_symbols(data, 64, 9)
    named = {s.name: s for s in symbols if not s.contribution}
    assert set(named) == {"a_function_name_longer_than_eight", "short", "shared_counter_name"}
    assert (named["a_function_name_longer_than_eight"].section, named["a_function_name_longer_than_eight"].value) == (
        1,
        0x10,
    )
    assert named["a_function_name_longer_than_eight"].function and named["a_function_name_longer_than_eight"].external
    assert named["short"].function and not named["short"].external and named["short"].source == "unit.c"
    assert not named["shared_counter_name"].function
    (contribution,) = [s for s in symbols if s.contribution]
    assert (contribution.name, contribution.length) == (".text", 0x40)


def test_coff_table_past_the_end_of_the_file_is_an_image_error() -> None:
    with pytest.raises(ImageError, match="runs past the end"):
        read_coff_symbols(b"\0" * 100, 90, 10)


def test_no_coff_table_gives_no_names() -> None:
    assert read_coff_symbols(b"MZ", 0, 0) == []


MAP = """ fix

 Timestamp is 00000000 (Thu Jan  1 00:00:00 1970)

 Preferred load address is 180000000

 Start         Length     Name                   Class
 0001:00000000 00001000H .text                   CODE

  Address         Publics by Value              Rva+Base               Lib:Object

 0000:00000000       __ImageBase                180000000     <linker-defined>
 0001:00000010       scale                      0000000180001010 f   scale.obj
 0002:00000000       ??_C@_05HELLO@hello?$AA@   0000000180002000     scale.obj

 Static symbols

 0001:00000040       helper                     0000000180001040 f   scale.obj
"""


def test_map_file_gives_publics_and_statics_as_rvas(tmp_path: Path) -> None:
    path = tmp_path / "fix.map"
    path.write_text(MAP)
    assert read_map(str(path), 0x140000000) == {"scale": 0x1010, "??_C@_05HELLO@hello?$AA@": 0x2000, "helper": 0x1040}


def test_map_file_without_symbols_says_which_file_to_pass(tmp_path: Path) -> None:
    path = tmp_path / "empty.map"
    path.write_text("nothing here\n")
    with pytest.raises(ImageError, match="/map file"):
        read_map(str(path), 0)
