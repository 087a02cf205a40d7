"""What a process runs: the base image check (pin) and the state of each patched function's bytes in memory."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from ..backends.base import ModuleInfo, ProcessHandle
from ..errors import BackendError, ImageError
from ..image import header_fields, pin_matches
from ..package import LONG_JUMP_SIZE, Manifest, PatchedFunction
from .relocate import jump_bytes

__all__ = ["FunctionBytes", "ImageCheck", "check_image", "code_of", "read_functions"]

_HEADER_READ = 4096


@dataclass(frozen=True)
class ImageCheck:
    """``image``: "base" (the pinned base image is loaded), "patched" (the package's patched image is loaded:
    cold-patched already) or "other"; ``reason`` explains "other" and notes anything odd about the file on disk."""

    image: str
    reason: Optional[str] = None


@dataclass(frozen=True)
class FunctionBytes:
    """One function's padding + entry bytes as read (``current``) and as the base image has them (``base``);
    ``state``: "base", "patched" (this package's jump to ``blob_address``) or "other"."""

    function: PatchedFunction
    address: int
    current: bytes
    base: bytes
    state: str


class FileHashes:
    """SHA-256 of module files on disk, computed once per (path, size, mtime) in a run."""

    def __init__(self) -> None:
        self._cache: Dict[Tuple[str, int, int], Optional[str]] = {}

    def sha256(self, path: str) -> Optional[str]:
        """The file's hex SHA-256, or None when it cannot be read (hashing is best effort)."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        key = (path, st.st_size, st.st_mtime_ns)
        if key not in self._cache:
            digest = hashlib.sha256()
            try:
                with open(path, "rb") as handle:
                    for chunk in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(chunk)
                self._cache[key] = digest.hexdigest()
            except OSError:
                self._cache[key] = None
        return self._cache[key]


def check_image(handle: ProcessHandle, module: ModuleInfo, manifest: Manifest, hashes: FileHashes) -> ImageCheck:
    """Compare the headers mapped at the module's base with the package's base (and patched) pin.

    The file on disk is hashed when readable: a file that is neither the base nor the patched image (the cold
    path stages the patched one while old processes still run the base) is refused, since it means another build
    is installed. Raises BackendError when the headers cannot be read.
    """
    header = handle.read(module.base, min(_HEADER_READ, module.size) if module.size else _HEADER_READ)
    try:
        fields = header_fields(header)
    except ImageError as exc:
        return ImageCheck("other", f"{module.name} at 0x{module.base:x}: {exc}")
    base_mismatch = pin_matches(manifest.base, fields)
    if base_mismatch is not None:
        if pin_matches(manifest.patched, fields) is None:
            return ImageCheck("patched", f"{module.name} is already the patched image (cold-patched)")
        return ImageCheck("other", base_mismatch)
    digest = hashes.sha256(module.path)
    if digest is not None and digest not in (manifest.base.sha256, manifest.patched.sha256):
        return ImageCheck(
            "other",
            f"{module.path} on disk has SHA-256 {digest[:16]}…, neither the base image ({manifest.base.sha256[:16]}…) "
            "nor the patched one: another build is installed; get a package for it or use the cold path",
        )
    return ImageCheck("base")


def read_functions(
    handle: ProcessHandle, module_base: int, manifest: Manifest, blob_address: Optional[int]
) -> List[FunctionBytes]:
    """Read every patched function's padding + entry; ``blob_address`` is where this package's blob lives in
    the process according to the journal (None: no record, so a jump can only be "other")."""
    views = []
    for function in manifest.functions:
        start = module_base + function.padding_rva
        base = function.padding + function.entry
        current = handle.read(start, len(base))
        if current == base:
            state = "base"
        elif blob_address is not None and current == patched_bytes(function, module_base, blob_address):
            state = "patched"
        else:
            state = "other"
        views.append(FunctionBytes(function, start, current, base, state))
    return views


def patched_bytes(function: PatchedFunction, module_base: int, blob_address: int) -> bytes:
    """Padding + entry as they are once ``function`` is redirected to the blob at ``blob_address``."""
    _unused, long_jump, _unused, short_jump = jump_bytes(function, module_base, blob_address)
    head = function.padding[: len(function.padding) - LONG_JUMP_SIZE]
    return head + long_jump + short_jump + function.entry[len(short_jump) :]


def code_of(views: List[FunctionBytes]) -> str:
    """The code a process runs, "base", "patched" or "unknown", from its process functions (mixed states are "unknown")."""
    states = {view.state for view in views}
    if states == {"base"}:
        return "base"
    if states == {"patched"}:
        return "patched"
    return "unknown"


def describe_other(views: List[FunctionBytes]) -> str:
    """A reason naming the first function whose bytes are neither base nor this package's jump."""
    for view in views:
        if view.state == "other":
            hint = (
                "carries a jump this engine did not journal (another package or tool?)"
                if view.current[-len(view.function.entry) :].startswith(b"\xeb")
                else "holds unexpected bytes"
            )
            return (
                f"{view.function.name} at 0x{view.address + len(view.function.padding):x} {hint}: "
                f"found {view.current.hex()}, expected {view.base.hex()}; roll back the other patch or use the cold path"
            )
    return "mixed code state"


def safe_read_functions(
    handle: ProcessHandle, module_base: int, manifest: Manifest, blob_address: Optional[int]
) -> Tuple[Optional[List[FunctionBytes]], Optional[str]]:
    """read_functions, with a BackendError turned into a reason."""
    try:
        return read_functions(handle, module_base, manifest, blob_address), None
    except BackendError as exc:
        return None, f"cannot read the patched functions' bytes: {exc}"
