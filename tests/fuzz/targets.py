"""What the fuzzers and the property tests feed hostile input to: the package reader and the image model.

Each target takes bytes and must either succeed or raise the engine's own error for that input (PackageError,
ImageError): any other exception is a bug, because the engine would report it as a crash instead of a
reason, and could have acted on half-parsed input.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Callable

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch import image
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch import package as pkg
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.errors import ImageError, PackageError

SMALL_LIMITS = pkg.Limits(max_members=16, max_member_size=1 << 20, max_total_size=2 << 20, max_manifest_size=1 << 16)


def read_package(data: bytes) -> None:
    try:
        package = pkg.read_package(data, SMALL_LIMITS)
    except PackageError:
        return
    # Whatever the reader accepts must be internally consistent: hashes match, blob size matches.
    for name, member in package.members.items():
        assert hashlib.sha256(member).hexdigest() == package.manifest.members[name]
    if package.manifest.hotpatchable:
        assert len(package.blob) == package.manifest.blob_size


def parse_image(data: bytes) -> None:
    with contextlib.suppress(ImageError):
        image.header_fields(data[:4096])
    try:
        pe = image.load_pe(data)
        image.pin_from_bytes(data, "fuzz.dll", pe)
        image.function_ranges(pe)
    except ImageError:
        return


TARGETS: dict[str, Callable[[bytes], None]] = {"package": read_package, "image": parse_image}


def seed_package() -> bytes:
    """A small valid hotpatchable package: the starting point mutations work from."""
    blob = bytes(range(48))
    module = b"MZ" + bytes(126)
    pin = pkg.ImagePin("appcore.dll", 0x8664, 7, 0x3000, 0, "ab" * 32, 0x180000000)
    manifest = pkg.Manifest(
        package_id="seed",
        version="1",
        module="appcore.dll",
        base=pin,
        patched=pin,
        patched_member="module/appcore.dll",
        hotpatchable=True,
        members={
            pkg.BLOB_MEMBER: hashlib.sha256(blob).hexdigest(),
            "module/appcore.dll": hashlib.sha256(module).hexdigest(),
        },
        functions=(pkg.PatchedFunction("f", 0x1010, 16, b"\x8b\xff", 0x1008, b"\xcc" * 8, 0, 16),),
        relocations=(pkg.Relocation(4, "rel32", "base", 0x2000, -4, "g"),),
        unwind=pkg.UnwindTable(16, 1),
        blob_size=len(blob),
    )
    out = io.BytesIO()
    pkg.write_package(out, manifest, {pkg.BLOB_MEMBER: blob, "module/appcore.dll": module})
    return out.getvalue()
