"""Fixture builds are cached by content and safe to race: concurrent test processes end up sharing one
complete build, and a later call reuses it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.fixtures.pe.build import MANIFEST, REPO

SCRIPT = "from tests.fixtures.pe import build_all, driver_exe; build_all(); print(driver_exe().parent)"


def test_concurrent_builders_share_one_complete_build_that_later_calls_reuse(tmp_path: Path) -> None:
    env = {**os.environ, "REBOOTLESS_FIXTURE_CACHE": str(tmp_path)}
    racers = [
        subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
        for _racer in range(2)
    ]
    folders = {racer.communicate(timeout=600)[0].strip() for racer in racers}
    assert [racer.returncode for racer in racers] == [0, 0]
    assert len(folders) == 1
    folder = Path(folders.pop())
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [folder.name]
    assert not list(tmp_path.glob(".building-*"))
    built = (folder / MANIFEST).stat().st_mtime_ns

    again = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, check=False
    )
    assert again.returncode == 0 and again.stdout.strip() == str(folder)
    assert (folder / MANIFEST).stat().st_mtime_ns == built
