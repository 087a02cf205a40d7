"""How the journaled jumps of a switch or restore become process writes (host/jumpwrites.py)."""

from __future__ import annotations

import pytest

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.host.journal import JournalWrite
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.host.jumpwrites import (
    jumps_in_one_page,
    restore_writes,
    switch_writes,
)

LONG_OLD, LONG_NEW = "cccccccccc", "e911223344"
SHORT_OLD, SHORT_NEW = "4889", "ebf9"


def jumps(name: str, entry: int) -> list[JournalWrite]:
    return [
        JournalWrite(name, "padding", entry - 5, LONG_OLD, LONG_NEW),
        JournalWrite(name, "entry", entry, SHORT_OLD, SHORT_NEW),
    ]


def shape(writes: list) -> list[tuple[int, str, tuple[str, ...]]]:
    return [(w.address, w.data.hex(), tuple(p.part for p in w.parts)) for w in writes]


@pytest.mark.parametrize("offset", [0x5, 0x10, 0x800, 0xFFE])
def test_jumps_in_one_page_go_in_one_write(offset: int) -> None:
    entry = 0x180002000 + offset
    assert jumps_in_one_page(entry)
    assert shape(switch_writes(jumps("f", entry))) == [(entry - 5, LONG_NEW + SHORT_NEW, ("padding", "entry"))]
    assert shape(restore_writes(jumps("f", entry))) == [(entry - 5, LONG_OLD + SHORT_OLD, ("padding", "entry"))]


@pytest.mark.parametrize("offset", [0x0, 0x1, 0x4, 0xFFF])
def test_jumps_across_a_page_boundary_are_written_padding_first_and_restored_entry_first(offset: int) -> None:
    entry = 0x180002000 + offset
    assert not jumps_in_one_page(entry)
    assert shape(switch_writes(jumps("f", entry))) == [
        (entry - 5, LONG_NEW, ("padding",)),
        (entry, SHORT_NEW, ("entry",)),
    ]
    assert shape(restore_writes(jumps("f", entry))) == [
        (entry, SHORT_OLD, ("entry",)),
        (entry - 5, LONG_OLD, ("padding",)),
    ]


def test_functions_are_switched_in_order_and_restored_last_first_whatever_the_journal_order() -> None:
    a, b = jumps("a", 0x180001010), jumps("b", 0x180001050)
    journal_order = [a[0], b[0], a[1], b[1]]  # how the transaction journals them: paddings, then entries
    assert [w.address for w in switch_writes(journal_order)] == [0x18000100B, 0x18000104B]
    assert [w.address for w in restore_writes(journal_order)] == [0x18000104B, 0x18000100B]


def test_a_restore_rewrites_only_the_jumps_it_is_given() -> None:
    [padding, entry] = jumps("f", 0x180001010)
    assert shape(restore_writes([entry])) == [(entry.address, SHORT_OLD, ("entry",))]
    assert shape(restore_writes([padding])) == [(padding.address, LONG_OLD, ("padding",))]
    assert restore_writes([]) == []


def test_a_write_carries_an_entry_only_when_it_writes_entry_bytes() -> None:
    straddling = switch_writes(jumps("f", 0x180002000))
    assert [w.has_entry for w in straddling] == [False, True]
    assert [w.has_entry for w in switch_writes(jumps("g", 0x180002010))] == [True]
