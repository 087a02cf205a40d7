"""Write-ahead journal: one JSON file per apply (or stage) under ``<state_dir>/journal``.

Every change to a record is written to ``<file>.tmp``, fsynced, renamed over the file and the directory fsynced,
so a reader always sees either the previous or the new record, never a torn one. Records are written BEFORE the
change they describe (intent) and completed after it; ``recover`` reads the target's bytes to decide how an
incomplete record ends.

File names: ``<UTC yyyymmddTHHMMSSffffff>-<kind>-<package_id>.json``. Files whose records are all final move to
``<state_dir>/journal/done/`` (kept for audit, never read again by the engine).

Process record states (``ProcessRecord.state``):
``staging`` blob allocated (maybe unwind registered), no jump written (with ``blob_mapped`` false: the allocation
at ``blob_address`` is only intended, written ahead of the system call that makes it); ``switching`` threads stopped, jumps being
written; ``applied`` every jump in place; ``rolling_back`` originals being restored; ``rolled_back`` originals
back; ``aborted`` apply undone before or during the switch; ``retired`` the process is gone (its identity no
longer matches a live process). ``blob_freed`` says whether the blob and its unwind table are gone: a rolled back
or aborted record stays open until they are.
Stage record states: ``staging``, ``staged``, ``unstaging``, ``unstaged``, ``aborted``.

Concurrency: worker threads patching several processes share one apply file. Changes to records go through
``touch`` / ``add_process`` (under one lock, which ``save`` also holds while it takes its snapshot), and ``save`` is
a group commit: a caller returns once a write that began after its call is durable, and callers arriving while a
write is under way share the next one. So the write-ahead rule holds per process with far fewer fsyncs.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from .. import ENGINE_VERSION
from ..errors import JournalError

__all__ = [
    "ApplyJournal",
    "Journal",
    "JournalWrite",
    "PackageRef",
    "ProcessRecord",
    "StageJournal",
    "fsync_dir",
]

JOURNAL_FORMAT = 1
FINAL_STAGE_STATES = ("unstaged", "aborted")


@dataclass
class PackageRef:
    """Which package a record belongs to; ``key`` is the SHA-256 of manifest.json (stable across re-signing)."""

    id: str
    version: str
    module: str
    key: str
    sha256: str


@dataclass
class JournalWrite:
    """One write of the switch, in write order: ``address`` (VA), ``original`` and ``new`` bytes as hex."""

    function: str
    part: str  # "padding" (long jump) or "entry" (short jump)
    address: int
    original: str
    new: str


@dataclass
class ProcessRecord:
    """What the engine did (or is doing) to one process; addresses are VAs in that process."""

    pid: int
    start_time: str
    name: str
    windows_pid: Optional[int]
    module_base: int
    module_path: str
    blob_address: int
    blob_size: int
    unwind_table: Optional[int] = None
    unwind_count: int = 0
    writes: List[JournalWrite] = field(default_factory=list)
    state: str = "staging"
    blob_freed: bool = False
    blob_sha256: str = ""  # of the relocated blob as written: tells our blob from memory reused after a free
    blob_mapped: bool = True  # False while the allocation at blob_address is only intended (journaled ahead)
    releasing: bool = False  # set (and saved) before the table is removed and the blob freed
    table_removed: bool = False
    note: str = ""
    updated: str = ""

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> ProcessRecord:
        values = dict(data)
        values["writes"] = [JournalWrite(**w) for w in values.get("writes", [])]
        return cls(**values)

    @property
    def final(self) -> bool:
        """True once the record describes nothing left in the process (or the process is gone)."""
        return self.state == "retired" or (self.state in ("rolled_back", "aborted") and self.blob_freed)

    @property
    def needs_attention(self) -> bool:
        """True when a killed engine left this record between states, or a blob is still waiting to be freed."""
        return self.state in ("staging", "switching", "rolling_back") or (
            self.state in ("rolled_back", "aborted") and not self.blob_freed
        )


@dataclass
class ApplyJournal:
    """One journal file of kind ``apply``: the package and one record per process patched by that run."""

    path: str
    package: PackageRef
    created: str
    processes: List[ProcessRecord] = field(default_factory=list)
    kind: str = "apply"

    @property
    def final(self) -> bool:
        return all(p.final for p in self.processes)


@dataclass
class StageJournal:
    """One journal file of kind ``stage``: a module file replaced on disk (cold path)."""

    path: str
    package: PackageRef
    created: str
    module_path: str
    backup: str
    temp: str
    sha256_before: str
    sha256_after: str
    state: str = "staging"
    note: str = ""
    kind: str = "stage"

    @property
    def final(self) -> bool:
        return self.state in FINAL_STAGE_STATES


class Journal:
    """The journal directory of one state dir; every method raises JournalError on damaged files."""

    def __init__(self, state_dir: str) -> None:
        self.dir = os.path.join(state_dir, "journal")
        self.done_dir = os.path.join(self.dir, "done")
        self.lock = threading.RLock()  # record changes and save snapshots; callers may hold it around several
        self._commits: Dict[str, _GroupCommit] = {}
        self.writes = 0  # files written durably by this object (for benchmarks: fsyncs come in pairs)

    # -- creating and saving ----------------------------------------------------------------------------------

    def new_apply(self, package: PackageRef) -> ApplyJournal:
        """A new apply journal (not on disk until the first ``save``)."""
        return ApplyJournal(self._new_path("apply", package.id), package, _now())

    def new_stage(
        self, package: PackageRef, module_path: str, backup: str, temp: str, before: str, after: str
    ) -> StageJournal:
        """A new stage journal (not on disk until the first ``save``)."""
        return StageJournal(
            self._new_path("stage", package.id), package, _now(), module_path, backup, temp, before, after
        )

    def save(self, record: Any) -> None:
        """Durably replace the record's file (temp file, fsync, rename, fsync the directory) with a snapshot
        taken after this call began; concurrent callers for the same file share one write (group commit)."""
        with self.lock:
            commit = self._commits.setdefault(record.path, _GroupCommit())
        commit.save(lambda: self._snapshot(record), self._write)

    def _snapshot(self, record: Any) -> Tuple[str, str]:
        """(path, JSON text) of the record as it is now; taken under the lock so no change is half-seen.

        One line per process record, each encoded by json's C encoder: an apply over 100 processes writes its file
        some 300 times, and dataclasses.asdict plus an indented (pure Python) dump of every record took ~10 ms
        per write there, most of the verb's time."""
        with self.lock:
            if isinstance(record, ApplyJournal):
                for proc in record.processes:
                    proc.updated = proc.updated or _now()
                procs = [_process_dict(proc) for proc in record.processes]
                data = {name: getattr(record, name) for name in _APPLY_FIELDS if name != "processes"}
                data["package"] = asdict(record.package)
            else:
                procs = None
                data = asdict(record)
        path = data.pop("path")
        data["format"] = JOURNAL_FORMAT
        data["engine_version"] = ENGINE_VERSION
        if procs is None:
            return path, json.dumps(data, sort_keys=True, indent=1)
        head = json.dumps(data, sort_keys=True, indent=1)
        lines = ",\n".join(json.dumps(proc, sort_keys=True) for proc in procs)
        return path, f'{head[:-2]},\n "processes": [\n{lines}\n ]\n}}'

    def _write(self, path: str, text: str) -> None:
        os.makedirs(self.dir, exist_ok=True)
        temp = path + ".tmp"
        with open(temp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
        fsync_dir(self.dir)
        self.writes += 1

    def add_process(self, record: ApplyJournal, proc: ProcessRecord) -> None:
        """Append a process record to an apply file (the caller saves the journal)."""
        with self.lock:
            record.processes.append(proc)

    def touch(self, proc: ProcessRecord, state: str, note: str = "") -> None:
        """Set a process record's state (the caller saves the journal)."""
        with self.lock:
            proc.state = state
            proc.updated = _now()
            if note:
                proc.note = note

    def archive(self, record: Any) -> None:
        """Move a final record's file to ``done/``."""
        os.makedirs(self.done_dir, exist_ok=True)
        target = os.path.join(self.done_dir, os.path.basename(record.path))
        with self.lock:
            self._commits.pop(record.path, None)
        os.replace(record.path, target)
        fsync_dir(self.dir)
        record.path = target

    # -- reading -----------------------------------------------------------------------------------------------

    def records(self) -> Iterator[Any]:
        """Every open record (ApplyJournal or StageJournal), oldest first; stale ``.tmp`` files are ignored."""
        if not os.path.isdir(self.dir):
            return
        for name in sorted(os.listdir(self.dir)):
            if not name.endswith(".json"):
                continue
            path = os.path.join(self.dir, name)
            try:
                record = self.load(path)
            except JournalError:
                if not os.path.exists(path):  # archived meanwhile by an engine holding the lock
                    continue
                raise
            yield record

    def load(self, path: str) -> Any:
        """Read one journal file; raises JournalError naming the file when it is not a journal we wrote."""
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
            if data.pop("format", None) != JOURNAL_FORMAT:
                raise ValueError(f"format is not {JOURNAL_FORMAT}")
            data.pop("engine_version", None)
            package = PackageRef(**data.pop("package"))
            kind = data.get("kind")
            if kind == "apply":
                procs = [ProcessRecord.from_dict(p) for p in data.pop("processes")]
                return ApplyJournal(path=path, package=package, processes=procs, **data)
            if kind == "stage":
                return StageJournal(path=path, package=package, **data)
            raise ValueError(f"unknown kind {kind!r}")
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise JournalError(
                f"journal file {path} is damaged ({exc}): inspect it, then move it out of {self.dir} once the "
                "processes it names are known to be consistent"
            ) from exc

    def applies(self, key: Optional[str] = None) -> List[ApplyJournal]:
        """Open apply journals, optionally only those of the package whose manifest SHA-256 is ``key``."""
        return [r for r in self.records() if isinstance(r, ApplyJournal) and (key is None or r.package.key == key)]

    def stages(self, key: Optional[str] = None) -> List[StageJournal]:
        """Open stage journals, optionally only those of one package."""
        return [r for r in self.records() if isinstance(r, StageJournal) and (key is None or r.package.key == key)]

    def _new_path(self, kind: str, package_id: str) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"{time.time_ns() % 1_000_000_000 // 1000:06d}"
        base = os.path.join(self.dir, f"{stamp}-{kind}-{package_id}")
        path, n = base + ".json", 1
        while os.path.exists(path):
            path, n = f"{base}-{n}.json", n + 1
        return path


_APPLY_FIELDS = tuple(f.name for f in fields(ApplyJournal))
_PROCESS_FIELDS = tuple(f.name for f in fields(ProcessRecord) if f.name != "writes")
_WRITE_FIELDS = tuple(f.name for f in fields(JournalWrite))


def _process_dict(proc: ProcessRecord) -> Dict[str, Any]:
    """What asdict(proc) gives (every field a JSON scalar, ``writes`` a list of dicts), without its deep copies."""
    data = {name: getattr(proc, name) for name in _PROCESS_FIELDS}
    data["writes"] = [{name: getattr(w, name) for name in _WRITE_FIELDS} for w in proc.writes]
    return data


class _GroupCommit:
    """Write-ahead for several threads sharing one file: ``save`` returns once a snapshot taken after the call
    began is durable. One caller writes at a time; those arriving meanwhile are all covered by the next write."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._asked = 0  # saves requested so far
        self._done = 0  # every request numbered up to this one is durable
        self._writing = False

    def save(self, snapshot: Callable[[], Tuple[str, str]], write: Callable[[str, str], None]) -> None:
        """Raises what the write raised (OSError); callers it was to cover then try a write of their own."""
        with self._cond:
            self._asked += 1
            mine = self._asked
            while self._done < mine:
                if self._writing:
                    self._cond.wait()
                    continue
                self._writing = True
                covers = self._asked  # each of these callers changed its record before calling save()
                self._cond.release()
                written = False
                try:
                    write(*snapshot())
                    written = True
                finally:
                    self._cond.acquire()
                    self._writing = False
                    if written:
                        self._done = max(self._done, covers)
                    self._cond.notify_all()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def fsync_dir(path: str) -> None:
    if os.name == "nt":  # Windows has no directory fsync; NTFS journals the rename itself
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
