"""A small fake x64 module (headers + hotpatchable functions) and a matching hotpatch package, for unit tests.

The module's file layout equals its memory layout (section alignment = file alignment), so the same bytes are
the DLL on disk and the image mapped in a FakeProcess.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, replace
from pathlib import Path

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.backends.base import ModuleInfo, ProcessInfo
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.package import (
    BLOB_MEMBER,
    ImagePin,
    Manifest,
    PatchedFunction,
    Relocation,
    UnwindTable,
    write_package,
)

from .fake_backend import FakeBackend, FakeFunction, FakeProcess, FakeThread, Region

MODULE = "appcore.dll"
BASE = 0x180000000
TEXT_RVA = 0x1000
SLOT = 0x40
PADDING = b"\xcc" * 8
ENTRY = bytes.fromhex("48895c2408")  # mov [rsp+8], rbx: 5 bytes, so the short jump never splits it
BLOB_SLOT = 0x20
FN_CODE = 18  # lea rax,[rip+rel32] (7) + mov rax, imm64 (10) + ret (1)
# Filler before fn0 so that fn0's entry starts a page: its long jump ends one page and its short jump begins the
# next (two writes), while fn1 and up keep both jumps in one page (one write); see host/jumpwrites.py.
LEAD = 0x1000 - len(PADDING)


def entry_rva(index: int) -> int:
    """RVA of fn<index>'s entry in the fake module."""
    return TEXT_RVA + LEAD + index * SLOT + len(PADDING)


def image_bytes(functions: int, stamp: int) -> bytes:
    """Headers + .text of a fake x64 DLL with ``functions`` hotpatchable functions (CC padding, 5-byte entry)."""
    text = bytearray(b"\xcc" * LEAD)
    for _unused in range(functions):
        text += PADDING + ENTRY + b"\xc3" + b"\xcc" * (SLOT - len(PADDING) - len(ENTRY) - 1)
    size = TEXT_RVA + max(0x1000, -(-len(text) // 0x1000) * 0x1000)
    header = bytearray(0x1000)
    header[:2] = b"MZ"
    struct.pack_into("<I", header, 0x3C, 0x80)
    header[0x80:0x84] = b"PE\0\0"
    struct.pack_into("<HHIIIHH", header, 0x84, 0x8664, 1, stamp, 0, 0, 0xF0, 0x2022)
    opt = 0x98
    struct.pack_into("<H", header, opt, 0x20B)
    struct.pack_into("<Q", header, opt + 24, BASE)
    struct.pack_into("<I", header, opt + 56, size)
    struct.pack_into("<I", header, opt + 64, 0x1234 + stamp % 7)
    body = bytes(header) + bytes(text)
    return body + b"\0" * (size - len(body))


def pin_of(data: bytes, stamp: int) -> ImagePin:
    size = struct.unpack_from("<I", data, 0x98 + 56)[0]
    checksum = struct.unpack_from("<I", data, 0x98 + 64)[0]
    return ImagePin(MODULE, 0x8664, stamp, size, checksum, hashlib.sha256(data).hexdigest(), BASE)


@dataclass
class Fixture:
    """A built package and the module it patches."""

    package: Path
    module_path: Path
    base_image: bytes
    patched_image: bytes
    manifest: Manifest


def build(tmp: Path, functions: int = 3, cfg: bool = False, name: str = "fix.hpk", stamp: int = 0x5F000000) -> Fixture:
    """Write the base module to ``tmp/appcore.dll`` and a package patching ``functions`` functions."""
    base_image = image_bytes(functions, stamp)
    patched_image = image_bytes(functions, stamp + 1)
    blob = bytearray()
    relocs: list[Relocation] = []
    patched: list[PatchedFunction] = []
    for i in range(functions):
        offset = i * BLOB_SLOT
        code = b"\x48\x8d\x05" + b"\0" * 4 + b"\x48\xb8" + b"\0" * 8 + b"\xc3"
        blob += code + b"\xcc" * (BLOB_SLOT - len(code))
        relocs.append(Relocation(offset + 3, "rel32", "base", TEXT_RVA, -4, "data"))
        relocs.append(Relocation(offset + 9, "abs64", "blob", offset, 0, f"fn{i}"))
        entry = entry_rva(i)
        patched.append(
            PatchedFunction(f"fn{i}", entry, SLOT - len(PADDING), ENTRY, entry - len(PADDING), PADDING, offset, FN_CODE)
        )
    table = len(blob)
    unwind_info = table + 12 * functions
    for i in range(functions):
        for j, value in enumerate((i * BLOB_SLOT, i * BLOB_SLOT + FN_CODE, unwind_info)):
            relocs.append(Relocation(table + 12 * i + 4 * j, "rva32", "blob", value))
        blob += b"\0" * 12
    blob += bytes.fromhex("0100000000000000")
    module_member = f"module/{MODULE}"
    members = {BLOB_MEMBER: bytes(blob), module_member: patched_image}
    manifest = Manifest(
        package_id="appcore-fix",
        version="2.0.0",
        module=MODULE,
        base=pin_of(base_image, stamp),
        patched=pin_of(patched_image, stamp + 1),
        patched_member=module_member,
        hotpatchable=True,
        members={k: hashlib.sha256(v).hexdigest() for k, v in members.items()},
        functions=tuple(patched),
        relocations=tuple(relocs),
        unwind=UnwindTable(table, functions),
        cfg_targets=(0,) if cfg else (),
        blob_size=len(blob),
    )
    tmp.mkdir(parents=True, exist_ok=True)
    module_path = tmp / MODULE
    if not module_path.exists():
        module_path.write_bytes(base_image)
    package = tmp / name
    write_package(str(package), manifest, members)
    return Fixture(package, module_path, base_image, patched_image, manifest)


def cold_only(fixture: Fixture, tmp: Path) -> Path:
    """A cold-only variant of the fixture's package (no blob, one refusal)."""
    from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.package import Refusal

    members = {fixture.manifest.patched_member: fixture.patched_image}
    manifest = replace(
        fixture.manifest,
        package_id="appcore-cold",
        hotpatchable=False,
        functions=(),
        relocations=(),
        unwind=None,
        blob_size=0,
        members={k: hashlib.sha256(v).hexdigest() for k, v in members.items()},
        refusals=(Refusal("fn0", "changed layout of writable data: use the cold path"),),
    )
    path = tmp / "cold.hpk"
    write_package(str(path), manifest, members)
    return path


def spawn(
    backend: FakeBackend,
    fixture: Fixture,
    name: str = "appsvc.exe",
    threads: int = 2,
    image: bytes | None = None,
) -> FakeProcess:
    """A running process with the fixture's module loaded (the base image unless ``image`` says otherwise)."""
    pid = backend.next_pid()
    data = image if image is not None else fixture.base_image
    functions: dict[str, FakeFunction] = {}
    for f in fixture.manifest.functions:
        functions[f.name] = FakeFunction(BASE + f.base_rva, len(f.padding), f.padding + f.entry, f.blob_offset)
    process = FakeProcess(
        info=ProcessInfo(pid, name, f"start-{pid}", windows_pid=pid + 1000),
        module=ModuleInfo(MODULE, str(fixture.module_path), BASE, len(data)),
        functions=functions,
        regions=[Region(BASE, bytearray(data), "rx", "image")],
        threads=[FakeThread(pid * 10 + t, 0x7FF00000 + t) for t in range(threads)],
    )
    return backend.add(process)
