"""Cold path on disk: stage the patched module in place of the original (kept aside for undo), and unstage it.

A loaded DLL cannot be overwritten on Windows but it can be renamed, so ``stage`` renames the original to
``<module>.rebootless-<key12>`` (``key12``: the first 12 hex digits of the manifest's SHA-256), writes the patched
module to ``<module>.rebootless-tmp``, fsyncs it and renames it into place. Running processes keep the base image;
processes started afterwards load the fix. ``unstage`` renames the staged module to ``<backup>-staged`` (deleted
when nothing holds it) and the original back. Both are journaled write-ahead and idempotent.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Dict, Optional, Tuple

from ..errors import ImageError, JournalError, PackageError
from ..image import header_fields
from ..package import Package
from .faults import fault_point
from .journal import Journal, PackageRef, StageJournal, fsync_dir

__all__ = ["settle_stage", "stage_module", "unstage_module"]


def stage_module(
    journal: Journal,
    package: Package,
    ref: PackageRef,
    path: str,
    dry_run: bool = False,
    replace_other_build: bool = False,
) -> Tuple[bool, Dict[str, Any]]:
    """Put the package's patched module at ``path``; returns (changed, staged entry for the result).

    The file at ``path`` must be the package's base image, unless ``replace_other_build`` is set: then any PE
    image of the same machine is replaced (a host running another build of the module is exactly what the cold
    path is for); its SHA-256 is journaled and ``unstage`` puts that very file back.
    Raises ImageError when the file at ``path`` is missing, not a PE image of the package's machine, or (without
    ``replace_other_build``) another build than the base; PackageError when the package's module does not match
    its own pin.
    """
    manifest = package.manifest
    data = package.patched_module
    after = hashlib.sha256(data).hexdigest()
    if after != manifest.patched.sha256:
        raise PackageError(f"{manifest.patched_member} does not match manifest.patched.sha256: rebuild the package")
    current = _sha256(path)
    if current == after:
        return False, _entry(path, _backup(path, ref), manifest.base.sha256, after, "staged")
    if current is not None and current != manifest.base.sha256 and replace_other_build:
        _check_same_machine(path, manifest.base.machine)
    elif current != manifest.base.sha256:
        raise ImageError(
            f"{path} is {'missing' if current is None else 'SHA-256 ' + current[:16] + '…'}, not the base image "
            f"{manifest.base.sha256[:16]}… the package replaces: install the base build first, give the right module_path, "
            "or allow replacing another build (replace_other_build)"
        )
    backup = _backup(path, ref)
    if os.path.lexists(backup):
        raise ImageError(f"{backup} already exists and no journal owns it: move it away, then stage again")
    entry = _entry(path, backup, current, after, "would_stage" if dry_run else "staged")
    if dry_run:
        return True, entry
    record = journal.new_stage(ref, path, backup, path + ".rebootless-tmp", current, after)
    journal.save(record)
    fault_point("stage_after_intent")
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.replace(path, backup)
        fsync_dir(directory)
        fault_point("stage_after_rename")
        with open(record.temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(record.temp, path)
        fsync_dir(directory)
    except OSError as exc:
        settle_stage(journal, record)
        raise ImageError(f"cannot stage {path}: {exc.strerror}; the original was put back") from exc
    fault_point("stage_after_write")
    record.state = "staged"
    journal.save(record)
    return True, entry


def unstage_module(
    journal: Journal, ref: PackageRef, path: str, base_sha: str, dry_run: bool = False
) -> Tuple[bool, Optional[Dict[str, Any]]]:
    """Put the original module back at ``path``; returns (changed, staged entry or None when nothing was staged).

    Raises ImageError when the file is not the base image and this package staged nothing there.
    """
    key = os.path.normcase(os.path.abspath(path))
    record = next(
        (
            r
            for r in journal.stages(ref.key)
            if r.state == "staged" and os.path.normcase(os.path.abspath(r.module_path)) == key
        ),
        None,
    )
    if record is None:
        current = _sha256(path)
        if current == base_sha:
            return False, None
        raise ImageError(
            f"{path} was not staged by package {ref.id} (no journal record) and is not its base image: nothing to undo"
        )
    entry = _entry(
        path, record.backup, record.sha256_before, record.sha256_after, "would_unstage" if dry_run else "unstaged"
    )
    if dry_run:
        return True, entry
    record.state = "unstaging"
    journal.save(record)
    fault_point("unstage_after_intent")
    settle_stage(journal, record, fault=True)
    return True, entry


def settle_stage(journal: Journal, record: StageJournal, fault: bool = False) -> None:
    """Finish or undo a stage record from the files on disk (also the second half of ``unstage_module``)."""
    path, backup, directory = record.module_path, record.backup, os.path.dirname(os.path.abspath(record.module_path))
    try:
        if record.state == "staging":
            if os.path.lexists(backup) and _sha256(path) == record.sha256_after:
                record.state, record.note = (
                    "staged",
                    "stage interrupted after the patched module was in place; completed",
                )
            else:
                _remove(record.temp)
                if os.path.lexists(backup):
                    if os.path.lexists(path):
                        raise JournalError(f"journal {record.path}: both {path} and {backup} exist: inspect them")
                    os.replace(backup, path)
                    fsync_dir(directory)
                record.state, record.note = "aborted", "stage interrupted; original module left in place"
        elif record.state == "unstaging":
            staged_aside = backup + "-staged"
            if os.path.lexists(backup):
                if os.path.lexists(path):
                    os.replace(path, staged_aside)
                    fsync_dir(directory)
                if fault:
                    fault_point("unstage_after_rename")
                os.replace(backup, path)
                fsync_dir(directory)
                if fault:
                    fault_point("unstage_after_restore")
            elif _sha256(path) != record.sha256_before:
                raise JournalError(
                    f"journal {record.path}: neither {backup} nor the original at {path} exists: inspect them"
                )
            if not _remove(staged_aside):
                record.note = f"{staged_aside} is still in use; delete it after the processes using it restart"
            record.state = "unstaged"
    except OSError as exc:
        raise JournalError(f"journal {record.path}: cannot settle {path}: {exc.strerror}") from exc
    journal.save(record)


def _check_same_machine(path: str, machine: int) -> None:
    """Refuse to replace a file that is not a PE image for the package's machine (never stage over garbage)."""
    try:
        with open(path, "rb") as handle:
            fields = header_fields(handle.read(4096))
    except OSError as exc:
        raise ImageError(f"cannot read {path}: {exc.strerror}") from exc
    if fields.machine != machine:
        raise ImageError(
            f"{path} is a PE image for machine 0x{fields.machine:04x}, the package is for 0x{machine:04x}: not replaced"
        )


def _backup(path: str, ref: PackageRef) -> str:
    return f"{path}.rebootless-{ref.key[:12]}"


def _entry(path: str, backup: str, before: str, after: str, state: str) -> Dict[str, Any]:
    return {"path": path, "backup": backup, "sha256_before": before, "sha256_after": after, "state": state}


def _sha256(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return None


def _remove(path: str) -> bool:
    try:
        os.remove(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True
