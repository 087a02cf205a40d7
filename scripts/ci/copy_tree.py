"""Copy the collection to ``<dest>/ansible_collections/rebootless/windows`` for ansible-test.

ansible-test needs the collection at a real ``ansible_collections/<namespace>/<name>`` path (a symlink is not
enough). The copy holds exactly what git would see (tracked plus untracked-but-not-ignored files, so work in
progress is tested too, and .venv/.cache never are). The dependencies unpacked by ``make collections`` are linked
beside it so that sanity tests importing ansible.windows find it. The copy is made a git repository of its own
(files staged, nothing committed): ansible-test lists content with git from the nearest .git upwards, and would
otherwise find the outer checkout, where .cache is ignored, and skip every target.

Usage: copy_tree.py DEST_ROOT DEPENDENCY_ROOT
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

NAMESPACE, NAME = "rebootless", "windows"


def tree_files(root: Path) -> list[Path]:
    """Relative paths of the files git considers part of the tree (tracked or not ignored), existing ones only."""
    out = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
    ).stdout
    names = sorted({name for name in out.decode("utf-8").split("\0") if name})
    return [Path(n) for n in names if (root / n).is_file() or (root / n).is_symlink()]


def main(argv: list[str]) -> int:
    """Replace DEST_ROOT's copy of the collection; link each namespace found in DEPENDENCY_ROOT beside it."""
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    root = Path.cwd()
    dest_root = Path(argv[1]).resolve() / "ansible_collections"
    deps_root = Path(argv[2]).resolve() / "ansible_collections"
    dest = dest_root / NAMESPACE / NAME
    if dest.exists():
        shutil.rmtree(dest)
    files = tree_files(root)
    copied = 0
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copy2(root / rel, target, follow_symlinks=False)
        except FileNotFoundError:  # removed while we copied (someone is editing the checkout): not part of the tree
            continue
        copied += 1
    for namespace in sorted(deps_root.iterdir()) if deps_root.is_dir() else []:
        if namespace.name == NAMESPACE or not namespace.is_dir():
            continue
        link = dest_root / namespace.name
        if link.is_symlink() or link.exists():
            if link.is_symlink() and link.resolve() == namespace.resolve():
                continue
            if link.is_symlink():
                link.unlink()
            else:
                shutil.rmtree(link)
        link.symlink_to(namespace, target_is_directory=True)
    subprocess.run(["git", "init", "--quiet", str(dest)], check=True)
    subprocess.run(["git", "-C", str(dest), "add", "--all"], check=True)
    print(f"copy_tree: {copied} files -> {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
