"""Platform backends behind the interface in base.py; ``select_backend`` picks one by name."""

from __future__ import annotations

import importlib
import os
from typing import Any

from ..errors import BackendError, RequestError

__all__ = ["platform_of", "select_backend"]

_CLASSES = {"windows": "WindowsBackend", "wine": "WineBackend"}
_NAMES = tuple(_CLASSES)


def platform_of(name: str) -> str:
    """The platform ("windows" or "wine") for a request's backend name ("auto": windows when os.name is "nt", else wine)."""
    if name == "auto":
        return "windows" if os.name == "nt" else "wine"
    if name not in _NAMES:
        raise RequestError(f"backend {name!r} is not one of auto, {', '.join(_NAMES)}")
    return name


def select_backend(name: str = "auto") -> Any:
    """A ready Backend for ``name`` (``windows.WindowsBackend`` or ``wine.WineBackend``, built without
    arguments). Raises BackendError when the platform's backend cannot load on this host."""
    platform_name = platform_of(name)
    try:
        module = importlib.import_module(f"{__name__}.{platform_name}")
    except (ImportError, OSError, AttributeError) as exc:  # ctypes.windll is absent off Windows, etc.
        raise BackendError(f"the {platform_name} backend cannot load on this host: {exc}") from exc
    return getattr(module, _CLASSES[platform_name])()
