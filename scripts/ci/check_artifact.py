"""Check a built collection tarball: required members present, no local state (venv, caches, test output) inside.

Usage: check_artifact.py TARBALL
"""

from __future__ import annotations

import fnmatch
import sys
import tarfile
from pathlib import Path

REQUIRED = ["MANIFEST.json", "FILES.json", "README.md", "meta/runtime.yml"]
# Anything matching one of these (on any path component) must never ship.
FORBIDDEN = [
    ".venv",
    ".cache",
    ".collections",
    ".git",
    ".ansible",
    ".ci",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "__pycache__",
    "*.pyc",
    "*.tar.gz",
]
FORBIDDEN_PREFIXES = ["tests/output/", "demo/run/", "bench/results/", "scripts/ci/"]


def problems(names: list[str]) -> list[str]:
    """Human-readable problems with a member list (paths relative to the collection root)."""
    found = [f"missing {req}" for req in REQUIRED if req not in names]
    for name in names:
        parts = Path(name).parts
        if any(fnmatch.fnmatch(part, pattern) for part in parts for pattern in FORBIDDEN) or any(
            (name + "/").startswith(prefix) for prefix in FORBIDDEN_PREFIXES
        ):
            found.append(f"should not ship: {name}")
    return found


def main(argv: list[str]) -> int:
    """Exit 1 and list the problems when the artifact is wrong; print a one-line summary otherwise."""
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    path = Path(argv[1])
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    names = sorted(m.name.removeprefix("./") for m in members)
    bad = problems(names)
    for line in bad:
        print(f"check_artifact: {path.name}: {line}", file=sys.stderr)
    if bad:
        return 1
    size = path.stat().st_size
    print(f"check_artifact: {path.name}: {len(names)} members, {size / 1024:.0f} KiB, no local state inside")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
