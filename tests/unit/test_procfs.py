"""What the Wine backend reads from /proc and from Wine's ntdll.so, checked on this host's real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.backends import _procfs, _winelayout
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.backends._procfs import Mapping
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.backends.wine import _anonymous

MAPS = """\
00010000-00012000 r--s 00000000 fe:00 1548365                            /usr/share/wine/nls/l_intl.nls
140000000-140001000 r--p 00000000 fe:00 2146426                          /tmp/my dir/app.exe
140001000-140010000 r-xp 00000000 00:00 0
140010000-140020000 rw-p 00000000 00:00 0
7ffe0000-7ffe1000 r--s 00000000 fe:00 2146423                            /tmp/wine-x/tmpmap-7803f69d (deleted)
7ffd0000-7ffe0000 rw-p 00000000 00:00 0                                  [stack]
"""
NTDLL_SO = Path("/usr/lib/x86_64-linux-gnu/wine/x86_64-unix/ntdll.so")


def test_maps_keep_paths_with_spaces_and_mark_anonymous_mappings() -> None:
    maps = _procfs.parse_maps(MAPS)
    assert maps[1] == Mapping(0x140000000, 0x140001000, "r--p", 0, "/tmp/my dir/app.exe")
    assert maps[2].path == "" and maps[2].executable
    assert maps[4].path.endswith("(deleted)")
    assert maps[5].path == "[stack]"


def test_free_gaps_are_the_holes_between_mappings_clipped_to_the_window() -> None:
    maps = [Mapping(0x1000, 0x3000, "r--p", 0, ""), Mapping(0x5000, 0x6000, "r--p", 0, "")]
    assert _procfs.free_gaps(maps, 0x0, 0x8000) == [[0x0, 0x1000], [0x3000, 0x5000], [0x6000, 0x8000]]
    assert _procfs.free_gaps(maps, 0x2000, 0x5800) == [[0x3000, 0x5000]]
    assert _procfs.free_gaps(maps, 0x1000, 0x3000) == []


def test_only_anonymous_private_memory_counts_as_an_engine_allocation() -> None:
    maps = _procfs.parse_maps(MAPS)
    assert _anonymous(maps, 0x140001000, 0x1F000)  # two neighbouring anonymous mappings (merged or not)
    assert not _anonymous(maps, 0x140000000, 0x1000)  # the image header
    assert not _anonymous(maps, 0x140001000, 0x30000)  # runs past the mappings into a hole
    assert not _anonymous(maps, 0x140001800, 0x1000)  # not page aligned
    assert not _anonymous(maps, 0x7FFD0000, 0x1000)  # [stack] has a name


def test_own_process_identity_and_tasks() -> None:
    pid = os.getpid()
    assert _procfs.start_ticks(pid) == _procfs.start_ticks(pid) > 0
    assert pid in _procfs.task_ids(pid)
    assert _procfs.exe_is_64bit(pid)
    assert len(_procfs.boot_id()) == 36
    assert any(m.executable for m in _procfs.read_maps(pid))


def test_missing_process_raises_oserror() -> None:
    with pytest.raises(OSError):
        _procfs.read_maps(2**22 + 12345)


def test_elf_symbol_reads_dynamic_symbols_and_rejects_other_files(tmp_path: Path) -> None:
    libc = next(m.path for m in _procfs.read_maps(os.getpid()) if "/libc.so" in m.path)
    assert isinstance(_winelayout.elf_symbol(libc, b"getpid"), int)
    assert _winelayout.elf_symbol(libc, b"no_such_symbol_here") is None
    (tmp_path / "not-elf").write_bytes(b"MZ" + b"\0" * 200)
    assert _winelayout.elf_symbol(str(tmp_path / "not-elf"), b"getpid") is None
    assert _winelayout.elf_symbol(str(tmp_path / "missing"), b"getpid") is None


@pytest.mark.skipif(not NTDLL_SO.exists(), reason="Wine's ntdll.so is not installed (Debian package wine64)")
def test_syscall_frame_layout_is_read_from_wine_ntdll_code() -> None:
    data = NTDLL_SO.read_bytes()
    mapping = Mapping(0x7F0000000000, 0x7F0000000000 + len(data), "r--p", 0, str(NTDLL_SO))

    def read(address: int, size: int) -> bytes:  # this build maps its text at file offset == vaddr
        offset = address - mapping.start
        return data[offset : offset + size]

    layout = _winelayout.probe([mapping], read)
    assert layout is not None  # Wine 8.0: WineLayout(teb_syscall_frame=0x328, frame_rsp=0x88)
    assert layout.teb_syscall_frame % 8 == 0 and layout.frame_rsp % 8 == 0
    assert _winelayout.probe([mapping], lambda address, size: b"\0" * size) is None
    assert _winelayout.probe([], read) is None
