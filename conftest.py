"""Make the repository importable as ``ansible_collections.rebootless.windows`` for pytest.

The repository root is the collection root, but Python (and ansible) only find a collection under an
``ansible_collections/<namespace>/<name>`` path. A symlink in the ignored ``.collections/`` folder gives
that path without copying the tree.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
COLLECTIONS = ROOT / ".collections"
_LINK = COLLECTIONS / "ansible_collections" / "rebootless" / "windows"

if not _LINK.exists():
    _LINK.parent.mkdir(parents=True, exist_ok=True)
    _LINK.symlink_to(ROOT, target_is_directory=True)
if str(COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS))
os.environ.setdefault("ANSIBLE_COLLECTIONS_PATH", os.pathsep.join([str(COLLECTIONS), str(ROOT / ".cache" / "collections")]))
