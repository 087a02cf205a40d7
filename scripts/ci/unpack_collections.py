"""Unpack chosen collections from the ``ansible`` community wheel, so nothing is fetched from Galaxy.

The ``ansible`` package on the Python package index carries every community collection as plain folders under
``ansible_collections/``. This extracts only the requested ones into DEST/ansible_collections/<ns>/<name>,
replacing each atomically, and writes a stamp naming the wheel so a second run with the same wheel does nothing.

Usage: unpack_collections.py WHEEL DEST ns.name [ns.name ...]
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path


def unpack(wheel: Path, dest: Path, fqcn: str) -> str:
    """Extract collection ``fqcn`` from ``wheel`` to dest; return its version; raises SystemExit if absent."""
    namespace, name = fqcn.split(".", 1)
    prefix = f"ansible_collections/{namespace}/{name}/"
    target = dest / "ansible_collections" / namespace / name
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive, tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        members = [m for m in archive.infolist() if m.filename.startswith(prefix) and not m.is_dir()]
        if not members:
            raise SystemExit(f"unpack_collections: {fqcn} is not in {wheel.name}; pick an ansible release that has it")
        staged = Path(tmp) / name
        for member in members:
            rel = member.filename[len(prefix) :]
            if rel.startswith("/") or ".." in Path(rel).parts:
                raise SystemExit(f"unpack_collections: unsafe member path {member.filename!r} in {wheel.name}")
            out = staged / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as src, out.open("wb") as dst:
                shutil.copyfileobj(src, dst)
        manifest = json.loads((staged / "MANIFEST.json").read_text(encoding="utf-8"))
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    return str(manifest["collection_info"]["version"])


def main(argv: list[str]) -> int:
    """Unpack each requested collection unless the stamp says this wheel already provided them all."""
    if len(argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    wheel, dest, wanted = Path(argv[1]), Path(argv[2]), sorted(argv[3:])
    stamp = dest / ".unpacked.json"
    expected = {"wheel": wheel.name, "collections": wanted}
    if stamp.exists() and json.loads(stamp.read_text(encoding="utf-8")) == expected:
        print(f"unpack_collections: {', '.join(wanted)} already unpacked from {wheel.name}")
        return 0
    for fqcn in wanted:
        print(f"unpack_collections: {fqcn} {unpack(wheel, dest, fqcn)} from {wheel.name}")
    stamp.write_text(json.dumps(expected), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
