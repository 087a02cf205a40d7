"""Opening a KB (.msu or .cab, both Microsoft cabinet files) into its payload files.

On a Windows host the OS's own ``expand.exe -F:* <archive> <dir>`` extracts it; elsewhere (the controller,
a Wine host, tests) ``cabextract`` (libmspack, Debian package ``cabextract``) does. An .msu holds .cab files
(the package, WSUSSCAN.cab metadata, sometimes a .psf or .wim payload); cabs inside are opened in turn, up to
``MAX_DEPTH`` levels. Every extracted path is checked to stay inside the extraction directory.
"""

from __future__ import annotations

import os
import subprocess
from typing import List, Sequence

from ..errors import PackageError
from .runner import Runner, system_tool

__all__ = ["MAX_DEPTH", "CabExtractor", "ExpandExtractor", "Extractor", "default_extractor", "open_kb"]

MAX_DEPTH = 3
_SKIP = ("wsusscan.cab",)  # update metadata only: no payload
CAB_MAGIC = b"MSCF"


class Extractor:
    """Interface: extract every member of one cabinet into an empty directory."""

    def argv(self, archive: str, dest: str) -> List[str]:
        raise NotImplementedError

    def __init__(self, runner: Runner, timeout_s: float = 1800.0) -> None:
        self.runner = runner
        self.timeout_s = timeout_s

    def extract(self, archive: str, dest: str) -> None:
        """Extract ``archive`` into ``dest``; raises PackageError with the tool's message when it fails."""
        os.makedirs(dest, exist_ok=True)
        argv = self.argv(archive, dest)
        try:
            done = self.runner.run(argv, self.timeout_s)
        except (OSError, subprocess.SubprocessError) as exc:
            raise PackageError(f"cannot run {argv[0]} to open {archive}: {exc}") from exc
        if done.rc != 0:
            detail = (done.stderr or done.stdout).strip()[-400:]
            raise PackageError(f"{os.path.basename(argv[0])} could not open {archive} (exit {done.rc}): {detail}")


class ExpandExtractor(Extractor):
    """Windows: ``%SystemRoot%\\System32\\expand.exe -F:* <archive> <dest>``."""

    def argv(self, archive: str, dest: str) -> List[str]:
        return [system_tool("System32", "expand.exe"), "-F:*", archive, dest]


class CabExtractor(Extractor):
    """Controller / Linux: ``cabextract -q -d <dest> <archive>`` (libmspack)."""

    def argv(self, archive: str, dest: str) -> List[str]:
        return ["cabextract", "-q", "-d", dest, archive]


def default_extractor(runner: Runner) -> Extractor:
    """expand.exe on Windows, cabextract elsewhere."""
    return ExpandExtractor(runner) if os.name == "nt" else CabExtractor(runner)


def open_kb(archive: str, workdir: str, extractor: Extractor) -> List[str]:
    """Every payload file of ``archive`` (an .msu or .cab), cabs inside opened in turn; paths under ``workdir``
    (an empty directory the caller owns and removes). Raises PackageError when ``archive`` is not a cabinet
    or an extraction fails or escapes ``workdir``."""
    if not _is_cab(archive):
        raise PackageError(f"{archive} is not a Microsoft cabinet (.msu/.cab start with 'MSCF'): give the KB file")
    return _open(archive, os.path.join(workdir, "0"), extractor, 1, os.path.realpath(workdir))


def _open(archive: str, dest: str, extractor: Extractor, depth: int, root: str) -> List[str]:
    extractor.extract(archive, dest)
    files: List[str] = []
    for path in _walk(dest, root):
        name = os.path.basename(path).lower()
        if name in _SKIP:
            continue
        if depth < MAX_DEPTH and name.endswith(".cab") and _is_cab(path):
            files.extend(_open(path, path + ".d", extractor, depth + 1, root))
        else:
            files.append(path)
    return files


def _walk(dest: str, root: str) -> Sequence[str]:
    found = []
    for folder, _dirs, names in os.walk(dest):
        for name in sorted(names):
            path = os.path.join(folder, name)
            real = os.path.realpath(path)
            if not real.startswith(root + os.sep) or os.path.islink(path):
                raise PackageError(f"cabinet member {path} escapes the extraction directory: refusing the KB")
            found.append(path)
    return sorted(found)


def _is_cab(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == CAB_MAGIC
    except OSError:
        return False
