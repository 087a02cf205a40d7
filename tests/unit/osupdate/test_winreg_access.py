"""WinRegistry's use of ``winreg`` (64-bit view, "not found" vs refused) against a strict stand-in module, and
``windows_facts`` never raising. The real ``winreg`` exists only on Windows (the windows_kb Molecule scenario)."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.osupdate import facts as facts_module
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.osupdate.registry import (
    REG_DWORD,
    RegistryError,
    RegValue,
    WinRegistry,
)

HKLM = 0x80000002
KEY_READ = 0x20019
KEY_WOW64_64KEY = 0x0100


class _Key:
    def __init__(self, path: str) -> None:
        self.path = path

    def __enter__(self) -> _Key:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def fake_winreg(hive: dict[str, dict[str, tuple[Any, int]]], refused: set[str]) -> types.ModuleType:
    """A winreg that checks the hive and the access mask, and fails like Windows does (winerror 2 / 5)."""
    module = types.ModuleType("winreg")

    def open_key(root: int, path: str, reserved: int, access: int) -> _Key:
        assert (root, reserved, access) == (HKLM, 0, KEY_READ | KEY_WOW64_64KEY), (root, reserved, access)
        if path in refused:
            raise PermissionError(13, "Access is denied", None, 5)
        if path not in hive:
            raise FileNotFoundError(2, "The system cannot find the file specified", None, 2)
        return _Key(path)

    def query_value_ex(key: _Key, name: str) -> tuple[Any, int]:
        if name not in hive[key.path]:
            raise FileNotFoundError(2, "The system cannot find the file specified", None, 2)
        return hive[key.path][name]

    module.HKEY_LOCAL_MACHINE = HKLM  # type: ignore[attr-defined]
    module.KEY_READ = KEY_READ  # type: ignore[attr-defined]
    module.KEY_WOW64_64KEY = KEY_WOW64_64KEY  # type: ignore[attr-defined]
    module.OpenKey = open_key  # type: ignore[attr-defined]
    module.QueryValueEx = query_value_ex  # type: ignore[attr-defined]
    return module


def test_values_keys_and_absence_read_through_the_64_bit_view(monkeypatch: pytest.MonkeyPatch) -> None:
    hive = {r"SYSTEM\CurrentControlSet\Control\Session Manager\Memory Management": {"HotPatchTableSize": (4096, 4)}}
    monkeypatch.setitem(sys.modules, "winreg", fake_winreg(hive, set()))
    registry = WinRegistry()
    key = r"SYSTEM\CurrentControlSet\Control\Session Manager\Memory Management"
    assert registry.value(key, "HotPatchTableSize") == RegValue(REG_DWORD, 4096)
    assert registry.value(key, "HotPatchRestrictions") is None
    assert registry.value(r"SOFTWARE\Nope", "X") is None
    assert registry.key_exists(key) is True and registry.key_exists(r"SOFTWARE\Nope") is False


def test_a_refused_read_is_an_error_that_says_to_run_as_administrator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "winreg", fake_winreg({}, {r"SOFTWARE\Locked"}))
    registry = WinRegistry()
    with pytest.raises(RegistryError, match="run the engine as an Administrator"):
        registry.value(r"SOFTWARE\Locked", "X")
    with pytest.raises(RegistryError, match="HKLM"):
        registry.key_exists(r"SOFTWARE\Locked")


def test_windows_facts_never_raise_and_say_why_they_are_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(facts_module, "os", types.SimpleNamespace(name="nt"))
    monkeypatch.setitem(sys.modules, "winreg", fake_winreg({}, {r"SOFTWARE\Microsoft\Windows NT\CurrentVersion"}))
    found = facts_module.windows_facts()
    assert list(found) == ["osupdate_error"]
    assert "run the engine as an Administrator" in found["osupdate_error"]
