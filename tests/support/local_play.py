"""Run a playbook against localhost with this checkout's collections (role and filter tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["run_local_playbook"]

ROOT = Path(__file__).resolve().parents[2]


def run_local_playbook(book: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``ansible-playbook -i localhost, -c local BOOK`` with the collection from .collections and the bundled
    dependencies from .cache/collections, no colour, no localhost/inventory warnings, remote tmp under
    ``tmp_path``. Returns the finished process (stdout and stderr captured); never raises on a failed play."""
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=f"{ROOT / '.collections'}:{ROOT / '.cache' / 'collections'}",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_LOCALHOST_WARNING="False",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="False",
        ANSIBLE_REMOTE_TMP=str(tmp_path / "remote"),
    )
    playbook = Path(sys.executable).parent / "ansible-playbook"
    return subprocess.run(
        [str(playbook), "-i", "localhost,", "-c", "local", str(book)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
