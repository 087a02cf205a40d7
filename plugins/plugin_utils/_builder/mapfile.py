"""Internal to rebootless.windows: symbol names from a linker /map file (MSVC format, as lld-link writes it).

Only the symbol lines of "Publics by Value" and "Static symbols" are read: ``SSSS:OOOOOOOO  name  VA  [f] [i]
object``. The preferred load address line gives the image base the VAs are relative to.
"""

from __future__ import annotations

import re

from ...module_utils.hotpatch.errors import ImageError

__all__ = ["read_map"]

_LINE = re.compile(r"^\s*([0-9A-Fa-f]{4}):([0-9A-Fa-f]{8})\s+(\S+)\s+([0-9A-Fa-f]{8,16})\b")
_BASE = re.compile(r"Preferred load address is ([0-9A-Fa-f]+)")


def read_map(path: str, image_base: int) -> dict[str, int]:
    """Map symbol name -> RVA (int) from the /map file at ``path``; VAs outside the image (absolute symbols,
    __ImageBase) are left out. ``image_base`` is used when the file does not state its load address.
    Raises ImageError when the file cannot be read or holds no symbol line."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError as exc:
        raise ImageError(f"cannot read map file {path}: {exc.strerror}") from exc
    match = _BASE.search(text)
    base = int(match.group(1), 16) if match else image_base
    names: dict[str, int] = {}
    for line in text.splitlines():
        found = _LINE.match(line)
        if not found or int(found.group(1), 16) == 0:
            continue
        rva = int(found.group(4), 16) - base
        if rva > 0:
            names.setdefault(found.group(3), rva)
    if not names:
        raise ImageError(f"{path} holds no symbol lines: pass the /map file lld-link or link.exe wrote for this build")
    return names
