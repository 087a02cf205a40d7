"""Internal to rebootless.windows: the builder's third-party imports, optional so that plugins still import without
them (ansible-test's import check, controllers that never build); ``require`` says what to install."""

from __future__ import annotations

from typing import Any

from ...module_utils.hotpatch.errors import ImageError

__all__ = ["iced_x86", "pefile", "require"]

try:
    import iced_x86 as _iced
except ImportError:  # pragma: no cover - exercised by ansible-test's import sanity check
    _iced = None  # type: ignore[assignment]
try:
    import pefile as _pefile
except ImportError:  # pragma: no cover
    _pefile = None

iced_x86: Any = _iced
pefile: Any = _pefile


def require() -> None:
    """Raise ImageError naming the missing packages when pefile or iced-x86 is not installed."""
    missing = [name for name, module in (("pefile", pefile), ("iced-x86", iced_x86)) if module is None]
    if missing:
        raise ImageError(
            f"the patch builder needs {' and '.join(missing)} on the controller: "
            "pip install -r requirements.txt from the collection (or into your execution environment)"
        )
