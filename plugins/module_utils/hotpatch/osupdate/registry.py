"""Read-only access to HKEY_LOCAL_MACHINE behind a small interface, so facts can be tested with a strict fake.

``Registry.value(path, name)`` returns a ``RegValue`` (type code + decoded data) or None when the key or the
value does not exist; ``Registry.key_exists(path)`` says whether a key exists. Paths are relative to
HKEY_LOCAL_MACHINE and use backslashes. ``WinRegistry`` is the real implementation (``winreg``, 64-bit view so a
32-bit Python still reads the native hive); it raises RegistryError for anything but "not found".
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, List, Optional, Union

from ..errors import BackendError

__all__ = [
    "REG_DWORD",
    "REG_EXPAND_SZ",
    "REG_MULTI_SZ",
    "REG_QWORD",
    "REG_SZ",
    "RegValue",
    "Registry",
    "RegistryError",
    "WinRegistry",
]

# Value type codes (winnt.h REG_*; the same numbers winreg uses).
REG_SZ = 1
REG_EXPAND_SZ = 2
REG_DWORD = 4
REG_MULTI_SZ = 7
REG_QWORD = 11

RegData = Union[int, str, List[str], bytes]


class RegistryError(BackendError):
    """The registry refused a read for another reason than "not found" (access denied, damaged hive)."""


@dataclass(frozen=True)
class RegValue:
    """One registry value: ``type`` (REG_* code) and ``data`` (int for DWORD/QWORD, str for SZ/EXPAND_SZ,
    list of str for MULTI_SZ, bytes otherwise)."""

    type: int
    data: RegData

    def as_int(self) -> Optional[int]:
        """The data as an int for DWORD/QWORD values (a numeric REG_SZ too, as some tools write); else None."""
        if self.type in (REG_DWORD, REG_QWORD) and isinstance(self.data, int):
            return self.data
        if self.type in (REG_SZ, REG_EXPAND_SZ) and isinstance(self.data, str):
            text = self.data.strip()
            try:
                return int(text, 16) if text.lower().startswith("0x") else int(text)
            except ValueError:
                return None
        return None

    def as_str(self) -> Optional[str]:
        """The data for REG_SZ / REG_EXPAND_SZ values, else None."""
        return self.data if self.type in (REG_SZ, REG_EXPAND_SZ) and isinstance(self.data, str) else None

    def as_list(self) -> List[str]:
        """The non-empty strings of a REG_MULTI_SZ value (a REG_SZ as one item); [] otherwise."""
        if self.type == REG_MULTI_SZ and isinstance(self.data, list):
            return [item for item in self.data if item]
        text = self.as_str()
        return [text] if text else []


class Registry:
    """Interface: HKLM reads the OS-update facts need. Subclasses implement both methods."""

    def value(self, path: str, name: str) -> Optional[RegValue]:
        """The value ``name`` of key ``path`` (HKLM-relative), or None when the key or the value is absent."""
        raise NotImplementedError

    def key_exists(self, path: str) -> bool:
        """Whether the key ``path`` (HKLM-relative) exists."""
        raise NotImplementedError


_NOT_FOUND = 2  # ERROR_FILE_NOT_FOUND: winreg's OSError.winerror for a missing key or value


class WinRegistry(Registry):
    """HKLM through ``winreg`` (Windows only; imported on first use), always the 64-bit registry view."""

    def __init__(self) -> None:
        # winreg only exists on Windows; imported by name so type checkers on other platforms accept it
        self._winreg: Any = importlib.import_module("winreg")
        self._access = self._winreg.KEY_READ | self._winreg.KEY_WOW64_64KEY

    def value(self, path: str, name: str) -> Optional[RegValue]:
        reg = self._winreg
        try:
            with reg.OpenKey(reg.HKEY_LOCAL_MACHINE, path, 0, self._access) as key:
                data, kind = reg.QueryValueEx(key, name)
        except OSError as exc:
            if getattr(exc, "winerror", None) == _NOT_FOUND or isinstance(exc, FileNotFoundError):
                return None
            raise RegistryError(f"cannot read HKLM\\{path}\\{name}: {exc}; run the engine as an Administrator") from exc
        return RegValue(int(kind), data)

    def key_exists(self, path: str) -> bool:
        reg = self._winreg
        try:
            with reg.OpenKey(reg.HKEY_LOCAL_MACHINE, path, 0, self._access):
                return True
        except OSError as exc:
            if getattr(exc, "winerror", None) == _NOT_FOUND or isinstance(exc, FileNotFoundError):
                return False
            raise RegistryError(f"cannot open HKLM\\{path}: {exc}; run the engine as an Administrator") from exc
