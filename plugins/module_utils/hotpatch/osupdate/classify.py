"""Predict, per host, whether a KB will hotpatch or needs a reboot, from its payload files and the installed ones.

Each payload file is classified against the installed file of the same name (found in ``system_dirs``, by
default ``%SystemRoot%\\System32``):

- ``hotpatch``: a PE image with a hot patch table (hotpatch_table.py) one of whose bases has the installed
  file's TimeDateStamp and CheckSum: Windows patches the loaded image in memory.
- ``wrong_base``: a hotpatch image whose bases do not include the installed file: this host is not on the
  baseline the KB patches (install the baseline, which needs a reboot).
- ``covered``: a full PE replacing an installed file that a hotpatch image of the same KB patches in memory
  (the new file is for the next start; no reboot needed for it).
- ``replaces_loaded``: a full PE replacing an installed file with another identity and no hotpatch for it: the
  running copy stays old until a restart.
- ``unchanged`` (same identity as installed), ``new`` (nothing installed under that name), ``not_installed``
  (a hotpatch image for a file this host does not have).
- ``unclassified``: not a PE image. Cumulative updates ship most files as deltas (``PA30``/``PA31``
  headers) against the installed version; judging those needs msdelta on the host, so they are listed, not
  guessed. The install result (DISM exit 3010, the pending-reboot state) is the final word.

Verdict: ``needs_reboot`` when any file is ``wrong_base`` or ``replaces_loaded`` or the host has blockers (VBS
off, not enrolled, reboot pending); ``hotpatch`` when some file is ``hotpatch`` and nothing needs a reboot;
``no_change`` when every PE file is ``unchanged``/``not_installed``; else ``unknown``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from ..errors import ImageError
from ..image import header_fields
from .hotpatch_table import HotPatchTable, read_hotpatch_table

__all__ = ["Classification", "FileVerdict", "Installed", "classify_files", "installed_lookup"]

_DELTA_MAGIC = (b"PA30", b"PA31", b"PA19")
_REBOOT = ("wrong_base", "replaces_loaded")


@dataclass(frozen=True)
class Installed:
    """An installed file's identity: ``path``, COFF ``time_date_stamp`` and optional-header ``checksum``."""

    path: str
    time_date_stamp: int
    checksum: int


@dataclass
class FileVerdict:
    """One payload file: ``name`` (base name), ``kind`` (see module docstring), ``reason`` for the operator."""

    name: str
    kind: str
    reason: str
    installed: Optional[Installed] = None
    bases: List[Tuple[int, int]] = field(default_factory=list)

    def as_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "reason": self.reason,
            "installed": None
            if self.installed is None
            else {
                "path": self.installed.path,
                "time_date_stamp": self.installed.time_date_stamp,
                "checksum": self.installed.checksum,
            },
            "bases": [{"time_date_stamp": s, "checksum": c} for s, c in self.bases],
        }


@dataclass
class Classification:
    """The prediction: ``verdict`` (hotpatch / needs_reboot / no_change / unknown), ``reasons`` for it, the
    per-file verdicts and the host ``blockers`` that forced a reboot."""

    verdict: str
    reasons: List[str]
    files: List[FileVerdict]
    blockers: List[str] = field(default_factory=list)

    def as_dict(self) -> Dict[str, Any]:
        counts: Dict[str, int] = {}
        for item in self.files:
            counts[item.kind] = counts.get(item.kind, 0) + 1
        return {
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "blockers": list(self.blockers),
            "counts": counts,
            "files": [item.as_dict() for item in self.files if item.kind != "unclassified"],
            "unclassified": sorted(item.name for item in self.files if item.kind == "unclassified"),
        }


def installed_lookup(system_dirs: Sequence[str]) -> InstalledLookup:
    """A lookup of installed files by base name (case-insensitive) in ``system_dirs``, first match wins."""
    return InstalledLookup(system_dirs)


class InstalledLookup:
    """Finds and identifies installed files; reads only the first 4 KiB (the headers) of each."""

    def __init__(self, system_dirs: Sequence[str]) -> None:
        self.system_dirs = list(system_dirs)
        self._cache: Dict[str, Optional[Installed]] = {}

    def find(self, name: str) -> Optional[Installed]:
        key = name.lower()
        if key not in self._cache:
            self._cache[key] = self._identify(name)
        return self._cache[key]

    def _identify(self, name: str) -> Optional[Installed]:
        for folder in self.system_dirs:
            path = _find_case_insensitive(folder, name)
            if path is None:
                continue
            try:
                with open(path, "rb") as handle:
                    fields = header_fields(handle.read(4096))
            except (OSError, ImageError):
                return None
            return Installed(path, fields.time_date_stamp, fields.checksum)
        return None


def classify_files(paths: Iterable[str], installed: InstalledLookup, blockers: Sequence[str] = ()) -> Classification:
    """Classify the payload files at ``paths`` (see module docstring). Damaged PE files are ``unclassified``
    with pefile's reason; this never raises for file contents."""
    tables: List[Tuple[str, HotPatchTable]] = []
    plain: List[Tuple[str, int, int]] = []
    verdicts: List[FileVerdict] = []
    for path in paths:
        name = os.path.basename(path)
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            verdicts.append(FileVerdict(name, "unclassified", f"cannot read: {exc.strerror}"))
            continue
        if data[:4] in _DELTA_MAGIC:
            verdicts.append(FileVerdict(name, "unclassified", "a delta against the installed file (msdelta)"))
            continue
        if data[:2] != b"MZ":
            verdicts.append(FileVerdict(name, "unclassified", "not a PE image"))
            continue
        try:
            fields = header_fields(data[:4096])
            table = read_hotpatch_table(data, name)
        except ImageError as exc:
            verdicts.append(FileVerdict(name, "unclassified", str(exc)))
            continue
        if table is not None:
            tables.append((name, table))
        else:
            plain.append((name, fields.time_date_stamp, fields.checksum))
    patched_in_memory = set()
    for name, table in tables:
        verdict = _classify_hotpatch(name, table, installed.find(name))
        if verdict.kind == "hotpatch" and verdict.installed is not None:
            patched_in_memory.add(verdict.installed.path.lower())
        verdicts.append(verdict)
    for name, stamp, checksum in plain:
        verdicts.append(_classify_plain(name, stamp, checksum, installed.find(name), patched_in_memory))
    return _verdict(verdicts, list(blockers))


def _classify_hotpatch(name: str, table: HotPatchTable, have: Optional[Installed]) -> FileVerdict:
    bases = [(b.time_date_stamp, b.checksum) for b in table.bases]
    if have is None:
        return FileVerdict(name, "not_installed", "a hotpatch for a file this host does not have", None, bases)
    if table.base_for(have.time_date_stamp, have.checksum) is not None:
        return FileVerdict(name, "hotpatch", "patches the installed image in memory", have, bases)
    wanted = ", ".join(f"0x{s:08x}/0x{c:08x}" for s, c in bases) or "none"
    return FileVerdict(
        name,
        "wrong_base",
        f"installed {have.path} is TimeDateStamp/CheckSum 0x{have.time_date_stamp:08x}/0x{have.checksum:08x}; the "
        f"hotpatch applies to {wanted}: this host is not on the KB's baseline (install the baseline with a reboot)",
        have,
        bases,
    )


def _classify_plain(name: str, stamp: int, checksum: int, have: Optional[Installed], hot: set[str]) -> FileVerdict:
    if have is None:
        return FileVerdict(name, "new", "no installed file of that name")
    if (have.time_date_stamp, have.checksum) == (stamp, checksum):
        return FileVerdict(name, "unchanged", "same image as installed", have)
    if have.path.lower() in hot:
        return FileVerdict(name, "covered", "replaced on disk; the running image is hotpatched in memory", have)
    return FileVerdict(
        name, "replaces_loaded", f"replaces {have.path} with another build and no hotpatch covers it", have
    )


def _verdict(files: List[FileVerdict], blockers: List[str]) -> Classification:
    kinds = {item.kind for item in files}
    reboot = [f"{item.name}: {item.reason}" for item in files if item.kind in _REBOOT]
    if blockers or reboot:
        return Classification("needs_reboot", blockers + reboot, files, blockers)
    if "hotpatch" in kinds:
        patched = sorted(item.name for item in files if item.kind == "hotpatch")
        return Classification("hotpatch", ["hotpatches " + ", ".join(patched)], files)
    if kinds and kinds <= {"unchanged", "not_installed"}:
        return Classification("no_change", ["every image is already installed or not present here"], files)
    if not files:
        return Classification("unknown", ["the KB holds no payload files"], files)
    return Classification(
        "unknown",
        ["no hotpatch image was found among the classifiable files; the install result decides"],
        files,
    )


def _find_case_insensitive(folder: str, name: str) -> Optional[str]:
    path = os.path.join(folder, name)
    if os.path.isfile(path):
        return path
    try:
        for entry in os.listdir(folder):
            if entry.lower() == name.lower() and os.path.isfile(os.path.join(folder, entry)):
                return os.path.join(folder, entry)
    except OSError:
        return None
    return None
