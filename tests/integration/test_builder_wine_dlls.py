"""The builder's image model over every x86-64 DLL Wine ships (~545 real PE files of every shape).

Each one must either load (symbols, imports, relocations, .pdata; a few functions decoded and their entries
checked) or fail with a clean ImageError naming the file. Measured here: about 65 s for all of them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.errors import ImageError
from ansible_collections.rebootless.windows.plugins.plugin_utils._builder.compare import decode_body
from ansible_collections.rebootless.windows.plugins.plugin_utils._builder.model import load_image
from ansible_collections.rebootless.windows.plugins.plugin_utils._builder.select import check_entry

WINE_DLLS = Path("/usr/lib/x86_64-linux-gnu/wine/x86_64-windows")
DLLS = sorted(WINE_DLLS.glob("*.dll")) if WINE_DLLS.is_dir() else []

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.skipif(not DLLS, reason="Wine's x86_64 DLLs are not installed"),
]


def test_image_model_understands_every_wine_dll_or_says_why() -> None:
    loaded = 0
    refused: list[str] = []
    for path in DLLS:
        try:
            image = load_image(str(path))
        except ImageError as exc:
            assert path.name in str(exc)
            refused.append(f"{path.name}: {exc}")
            continue
        loaded += 1
        size = image.pin.size_of_image
        assert all(0 < begin < end <= size for begin, end, _unwind in image.functions), path.name
        assert all(0 <= slot < size for slot in image.imports), path.name
        functions = [s for s in image.primary_symbols if s.function][:8]
        for symbol in functions:
            body = decode_body(image, symbol)
            assert len(body.code) == symbol.size
            entry, reason = check_entry(image, symbol)
            assert (entry is None) == bool(reason)
    assert loaded >= len(DLLS) * 0.95, refused
