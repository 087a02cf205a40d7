"""Internal to rebootless.windows: turn a selection and its blob into a deterministic hotpatch package."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import IO

from ...module_utils.hotpatch.package import (
    BLOB_MEMBER,
    MODULE_PREFIX,
    Manifest,
    NewFunction,
    PatchedFunction,
    Refusal,
    write_package,
)
from .model import Image
from .relocate import Blob
from .select import Selection

__all__ = ["BUILDER_ID", "emit", "make_manifest"]

BUILDER_ID = "rebootless.windows patch builder 1"


def make_manifest(
    base: Image,
    patched: Image,
    selection: Selection,
    blob: Blob,
    refusals: list[Refusal],
    package_id: str,
    version: str,
    description: str,
) -> tuple[Manifest, dict[str, bytes]]:
    """The manifest and members of the package. Hotpatchable when nothing was refused and at least one function
    changed; otherwise cold-only (the full patched module only, refusals listed)."""
    module = base.name
    member = MODULE_PREFIX + module
    hotpatchable = not refusals and bool(selection.entries)
    members = {member: patched.data}
    functions: tuple[PatchedFunction, ...] = ()
    new_functions: tuple[NewFunction, ...] = ()
    cfg: tuple[int, ...] = ()
    if hotpatchable:
        members[BLOB_MEMBER] = bytes(blob.code)
        functions = tuple(
            PatchedFunction(
                name=new.name,
                base_rva=old.rva,
                size=old.size,
                entry=selection.entries[new.name].entry,
                padding_rva=selection.entries[new.name].padding_rva,
                padding=selection.entries[new.name].padding,
                blob_offset=blob.offsets[new.name],
                blob_size=blob.sizes[new.name],
            )
            for old, new in selection.changed
            if new.name in selection.entries
        )
        carried_only = [new for _old, new in selection.changed if new.name not in selection.entries]
        new_functions = tuple(
            NewFunction(s.name, blob.offsets[s.name], blob.sizes[s.name], s.name in blob.address_taken)
            for s in carried_only + selection.new
        )
        cfg = tuple(sorted(blob.offsets[name] for name in blob.address_taken))
    patched_pin = dataclasses.replace(patched.pin, name=module)
    manifest = Manifest(
        package_id=package_id,
        version=version,
        module=module,
        base=base.pin,
        patched=patched_pin,
        patched_member=member,
        hotpatchable=hotpatchable,
        members={name: hashlib.sha256(data).hexdigest() for name, data in sorted(members.items())},
        description=description,
        functions=functions,
        new_functions=new_functions,
        relocations=tuple(blob.relocations) if hotpatchable else (),
        unwind=blob.unwind if hotpatchable else None,
        cfg_targets=cfg,
        refusals=tuple(refusals),
        blob_size=len(blob.code) if hotpatchable else 0,
        builder=BUILDER_ID,
    )
    return manifest, members


def emit(dest: str | IO[bytes], manifest: Manifest, members: dict[str, bytes]) -> str:
    """Write the package to ``dest`` (deterministic: same inputs, same bytes); returns its SHA-256 hex digest."""
    return write_package(dest, manifest, members)
