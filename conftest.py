"""Make the repository importable as ``ansible_collections.rebootless.windows`` for pytest.

The repository root is the collection root, but Python (and ansible) only find a collection under an
``ansible_collections/<namespace>/<name>`` path. A symlink in the ignored ``.collections/`` folder gives
that path without copying the tree (``make link`` makes the same link for mypy). ``ANSIBLE_COLLECTIONS_PATH``
also names ``.cache/collections``, where ``make collections`` unpacks ansible.windows and community.windows.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
COLLECTIONS = ROOT / ".collections"
DEPENDENCIES = ROOT / ".cache" / "collections"
_LINK = COLLECTIONS / "ansible_collections" / "rebootless" / "windows"


def _ensure_link() -> None:
    """Point the link at this checkout; tolerate a parallel pytest run making it first, replace a stale one."""
    if _LINK.is_symlink() and _LINK.resolve() == ROOT:
        return
    _LINK.parent.mkdir(parents=True, exist_ok=True)
    if _LINK.is_symlink():  # stale: the checkout moved, or a broken link
        _LINK.unlink()
    try:
        _LINK.symlink_to(ROOT, target_is_directory=True)
    except FileExistsError:
        if not (_LINK.is_symlink() and _LINK.resolve() == ROOT):
            raise RuntimeError(f"{_LINK} exists and is not a link to {ROOT}: remove it and run pytest again") from None


_ensure_link()
if str(COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS))
os.environ.setdefault("ANSIBLE_COLLECTIONS_PATH", os.pathsep.join([str(COLLECTIONS), str(DEPENDENCIES)]))

# Fixtures shared by the integration tests that run the PE fixtures under Wine (prefix, pairs).
pytest_plugins = ["tests.support.wine_fixtures"]
