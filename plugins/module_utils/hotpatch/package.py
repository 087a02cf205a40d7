"""Hotpatch package format: the contract between the patch builder (controller) and the engine (host).

A package is a zip archive with these members:

``manifest.json``
    UTF-8 JSON, canonical form (sorted keys, no insignificant white space); schema below (``Manifest``).
``manifest.sig``
    Optional detached signature over the exact bytes of ``manifest.json`` (format owned by the signing code).
``code.bin``
    The relocated code blob: changed and new functions, the read-only constants they need, and the unwind
    information (RUNTIME_FUNCTION array + UNWIND_INFO) of every function in it. Absent for cold-only packages.
``module/<name>``
    The full patched module, for the cold path (stage on disk, restart) and for persistence across restarts.

Every member other than ``manifest.json`` and ``manifest.sig`` must be listed in ``Manifest.members`` with its
SHA-256, and nothing else may be present. Member names are plain relative POSIX paths: no absolute paths, drive
letters, backslashes, ``..`` or empty components.

Placement and relocation (what the engine does with ``code.bin``): the engine allocates the blob at a virtual
address ``A`` within 2 GB above the module's load address ``B`` (so every RVA stays 32-bit), copies ``code.bin``
there, then applies each ``Relocation`` with ``S`` = ``B + value`` for ``target == "base"`` (an RVA in the base
image: unchanged function, data, or IAT slot) or ``A + value`` for ``target == "blob"``, and ``P = A +
blob_offset``:

- ``rel32``: int32 little-endian ``S + addend - P`` (branch/call displacement, RIP-relative operand; ``addend`` is
  minus the distance from the field to the end of its instruction, as ELF R_X86_64_PC32 does);
- ``abs64``: uint64 ``S + addend`` (absolute pointers, jump table entries);
- ``rva32``: uint32 ``S + addend - B`` (image-relative values: RUNTIME_FUNCTION fields, handler and LSDA RVAs in
  UNWIND_INFO, per the PE/COFF spec section "The .pdata Section").

Each patched function is redirected by writing ``E9 rel32`` (jump to ``A + blob_offset``) over its padding
(``padding_rva`` .. ``base_rva``) and then ``EB xx`` (short jump back into the padding) over the first two
entry bytes. The unwind table (``Manifest.unwind``) is registered with RtlAddFunctionTable(``A + offset``,
``count``, ``B``) before any jump is written.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import stat
import struct
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from typing import IO, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .errors import PackageError

__all__ = [
    "BLOB_MEMBER",
    "FORMAT_VERSION",
    "MANIFEST_MEMBER",
    "SIGNATURE_MEMBER",
    "ImagePin",
    "Limits",
    "Manifest",
    "NewFunction",
    "Package",
    "PatchedFunction",
    "Refusal",
    "Relocation",
    "UnwindTable",
    "canonical_json",
    "check_member_name",
    "read_package",
    "write_package",
]

FORMAT_VERSION = 1
MANIFEST_MEMBER = "manifest.json"
SIGNATURE_MEMBER = "manifest.sig"
BLOB_MEMBER = "code.bin"
MODULE_PREFIX = "module/"

RELOCATION_KINDS = ("rel32", "abs64", "rva32")
RELOCATION_TARGETS = ("base", "blob")
PADDING_BYTES = (0xCC, 0x90)
LONG_JUMP_SIZE = 5  # E9 rel32
SHORT_JUMP_SIZE = 2  # EB rel8

# Fixed zip metadata so that the same inputs give byte-identical packages.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_ZIP_MODE = (stat.S_IFREG | 0o644) << 16

# Everything zipfile and its decompressors raise on damaged or hostile archives (found by fuzzing: zlib.error
# for a corrupt deflate stream, RuntimeError for an encrypted member, NotImplementedError for other methods).
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    NotImplementedError,
    RuntimeError,
    ValueError,
    EOFError,
    OSError,
    OverflowError,
    struct.error,
)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_U32 = 0xFFFFFFFF


@dataclass(frozen=True)
class Limits:
    """Bounds the reader enforces before it trusts anything (sizes in bytes)."""

    max_members: int = 64
    max_member_size: int = 256 * 1024 * 1024
    max_total_size: int = 512 * 1024 * 1024
    max_manifest_size: int = 8 * 1024 * 1024
    max_ratio: int = 200  # uncompressed/compressed per member, against zip bombs


@dataclass(frozen=True)
class ImagePin:
    """Identity of a PE image (fields per the PE/COFF spec: COFF header, optional header, debug directory).

    ``name`` is the module file name as loaded (compared case-insensitively); ``machine`` the COFF Machine value
    (0x8664 for x64); ``time_date_stamp``, ``size_of_image`` (bytes) and ``checksum`` are header fields;
    ``sha256`` the hex digest of the whole file; ``image_base`` the preferred load address; ``pdb_guid`` /
    ``pdb_age`` the CodeView RSDS record when present.
    """

    name: str
    machine: int
    time_date_stamp: int
    size_of_image: int
    checksum: int
    sha256: str
    image_base: int
    pdb_guid: Optional[str] = None
    pdb_age: Optional[int] = None


@dataclass(frozen=True)
class PatchedFunction:
    """A base-image function redirected to its replacement in the blob.

    ``base_rva``: entry RVA in the base image. ``entry``: the bytes expected at the entry (at least the two the
    short jump replaces, and whole instructions). ``padding_rva`` and ``padding``: the bytes expected right before
    the entry (all 0xCC or all 0x90, at least 5, ``padding_rva + len(padding) == base_rva``). ``blob_offset`` /
    ``blob_size``: the replacement's place in ``code.bin``. ``size``: the base function's length in bytes (for
    activeness checks: return addresses in ``[base_rva, base_rva + size)``).
    """

    name: str
    base_rva: int
    size: int
    entry: bytes
    padding_rva: int
    padding: bytes
    blob_offset: int
    blob_size: int


@dataclass(frozen=True)
class NewFunction:
    """A function only the patched image has, carried in the blob; ``address_taken`` marks CFG call targets."""

    name: str
    blob_offset: int
    blob_size: int
    address_taken: bool = False


@dataclass(frozen=True)
class Relocation:
    """One field in ``code.bin`` the engine fixes up at apply time (semantics in the module docstring).

    ``symbol`` names the target for humans (``"fee"``, ``"KERNEL32.dll!Sleep"``, ``".rdata+0x40"``).
    """

    blob_offset: int
    kind: str
    target: str
    value: int
    addend: int = 0
    symbol: str = ""


@dataclass(frozen=True)
class UnwindTable:
    """Where the RUNTIME_FUNCTION array lies in ``code.bin``: ``offset`` in bytes, ``count`` entries of 12 bytes."""

    offset: int
    count: int


@dataclass(frozen=True)
class Refusal:
    """A change the builder would not hotpatch; ``reason`` says what a human can do about it."""

    function: str
    reason: str


@dataclass(frozen=True)
class Manifest:
    """The package manifest (``manifest.json``).

    ``hotpatchable`` is False for cold-only packages (then ``functions`` is empty and ``refusals`` says why).
    ``members`` maps every member other than the manifest and its signature to its SHA-256 hex digest.
    """

    package_id: str
    version: str
    module: str
    base: ImagePin
    patched: ImagePin
    patched_member: str
    hotpatchable: bool
    members: Mapping[str, str]
    description: str = ""
    functions: Tuple[PatchedFunction, ...] = ()
    new_functions: Tuple[NewFunction, ...] = ()
    relocations: Tuple[Relocation, ...] = ()
    unwind: Optional[UnwindTable] = None
    cfg_targets: Tuple[int, ...] = ()
    refusals: Tuple[Refusal, ...] = ()
    blob_size: int = 0
    format: int = FORMAT_VERSION
    builder: str = ""

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-ready dict; bytes become lowercase hex strings."""
        result: Dict[str, Any] = _jsonable(asdict(self))
        return result

    def to_json(self) -> bytes:
        """Canonical JSON bytes (the exact bytes a signature covers)."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Validate a decoded manifest; raises PackageError naming the first bad field."""
        return _ManifestParser(data).parse()


@dataclass
class Package:
    """A package that passed every check of ``read_package``: safe members, matching hashes, valid manifest."""

    manifest: Manifest
    manifest_bytes: bytes
    signature: Optional[bytes]
    sha256: str
    members: Dict[str, bytes] = field(repr=False, default_factory=dict)

    @property
    def blob(self) -> bytes:
        """The relocatable code blob (empty for cold-only packages)."""
        return self.members.get(BLOB_MEMBER, b"")

    @property
    def patched_module(self) -> bytes:
        """The full patched module file."""
        return self.members[self.manifest.patched_member]


def canonical_json(data: Any) -> bytes:
    """JSON with sorted keys, no white space and ASCII only: the same value always gives the same bytes."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def check_member_name(name: str) -> str:
    """Return ``name`` if it is a safe relative member path; raises PackageError when it could escape."""
    if not name or name.startswith("/") or "\\" in name or ":" in name or "\x00" in name:
        raise PackageError(f"package member name {name!r} is not a plain relative path")
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise PackageError(f"package member name {name!r} has an empty, '.' or '..' component")
    return name


def write_package(
    dest: Union[str, IO[bytes]],
    manifest: Manifest,
    members: Mapping[str, bytes],
    signature: Optional[bytes] = None,
) -> str:
    """Write a deterministic package; returns its SHA-256 hex digest.

    ``members`` must hold exactly the members ``manifest.members`` lists, with matching hashes (raises
    PackageError otherwise). ``signature`` is the ``manifest.sig`` document (signature.py) or None (unsigned).
    """
    listed = dict(manifest.members)
    if sorted(listed) != sorted(members):
        raise PackageError(f"members {sorted(members)} do not match the manifest's list {sorted(listed)}")
    for name, data in members.items():
        check_member_name(name)
        if hashlib.sha256(data).hexdigest() != listed[name]:
            raise PackageError(f"member {name} does not match its SHA-256 in the manifest")
    Manifest.from_dict(json.loads(manifest.to_json()))  # never write what the engine would refuse
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        entries = [(MANIFEST_MEMBER, manifest.to_json())]
        if signature is not None:
            entries.append((SIGNATURE_MEMBER, signature))
        entries.extend(sorted(members.items()))
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.external_attr = _ZIP_MODE
            info.create_system = 3
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data, compresslevel=6)  # 9 costs ~4x the time (5 MB: ~4 s) for <1% size
    payload = buffer.getvalue()
    if isinstance(dest, str):
        with open(dest, "wb") as handle:
            handle.write(payload)
    else:
        dest.write(payload)
    return hashlib.sha256(payload).hexdigest()


def read_package(source: Union[str, bytes], limits: Limits = Limits()) -> Package:
    """Open and fully verify a package from a path or bytes.

    Checks, in order: zip structure, member count and names, sizes and compression ratios (zip bombs), the
    manifest's schema, that the members present are exactly those listed, and each member's SHA-256.
    Raises PackageError naming the first problem. Signatures are checked by the caller (trust policy).
    """
    if isinstance(source, bytes):
        raw = source
    else:
        try:
            with open(source, "rb") as handle:
                raw = handle.read(limits.max_total_size + 1)
        except OSError as exc:
            raise PackageError(f"cannot read package {source}: {exc.strerror}") from exc
    if len(raw) > limits.max_total_size:
        raise PackageError(f"package is larger than {limits.max_total_size} bytes")
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
        infos = archive.infolist()
    except _ZIP_ERRORS as exc:
        raise PackageError(f"package is not a readable zip archive: {exc}") from exc
    with archive:
        members = _read_members(archive, infos, limits)
    manifest_bytes = members.pop(MANIFEST_MEMBER, None)
    if manifest_bytes is None:
        raise PackageError(f"package has no {MANIFEST_MEMBER}")
    signature = members.pop(SIGNATURE_MEMBER, None)
    try:
        decoded = json.loads(manifest_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise PackageError(f"{MANIFEST_MEMBER} is not valid UTF-8 JSON: {exc}") from exc
    manifest = Manifest.from_dict(decoded)
    missing = sorted(set(manifest.members) - set(members))
    extra = sorted(set(members) - set(manifest.members))
    if missing:
        raise PackageError(f"package lacks members listed in the manifest: {', '.join(missing)}")
    if extra:
        raise PackageError(f"package has members the manifest does not list: {', '.join(extra)}")
    for name, data in members.items():
        if hashlib.sha256(data).hexdigest() != manifest.members[name]:
            raise PackageError(f"member {name} does not match its SHA-256 in the manifest (tampered or corrupt)")
    if manifest.hotpatchable and len(members.get(BLOB_MEMBER, b"")) != manifest.blob_size:
        raise PackageError(
            f"{BLOB_MEMBER} is {len(members.get(BLOB_MEMBER, b''))} bytes, manifest says {manifest.blob_size}"
        )
    return Package(manifest, manifest_bytes, signature, hashlib.sha256(raw).hexdigest(), members)


def _read_members(archive: zipfile.ZipFile, infos: Sequence[zipfile.ZipInfo], limits: Limits) -> Dict[str, bytes]:
    if len(infos) > limits.max_members:
        raise PackageError(f"package has {len(infos)} members, more than the limit of {limits.max_members}")
    members: Dict[str, bytes] = {}
    total = 0
    for info in infos:
        name = check_member_name(info.filename)
        if info.is_dir():
            raise PackageError(f"package member {name!r} is a directory")
        if name in members:
            raise PackageError(f"package member {name!r} appears twice")
        cap = limits.max_manifest_size if name == MANIFEST_MEMBER else limits.max_member_size
        if info.file_size > cap or total + info.file_size > limits.max_total_size:
            raise PackageError(f"package member {name!r} is too large ({info.file_size} bytes)")
        if info.file_size > 1024 * 1024 and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise PackageError(f"package member {name!r} expands {info.file_size // max(info.compress_size, 1)}x")
        try:
            with archive.open(info) as handle:
                data = handle.read(cap + 1)
        except _ZIP_ERRORS as exc:
            raise PackageError(f"package member {name!r} cannot be read: {exc}") from exc
        if len(data) != info.file_size:
            raise PackageError(f"package member {name!r} does not have its declared size")
        total += len(data)
        members[name] = data
    return members


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


class _ManifestParser:
    """Strict schema check: every field of the right type and range, or PackageError naming it."""

    def __init__(self, data: Any) -> None:
        self.data = data

    def parse(self) -> Manifest:
        top = self._obj(self.data, "manifest")
        fmt = self._int(top, "format", "manifest", 1, 1 << 16)
        if fmt != FORMAT_VERSION:
            raise PackageError(f"manifest format {fmt} is not supported (this engine reads format {FORMAT_VERSION})")
        members_raw = self._obj(top.get("members"), "manifest.members")
        members: Dict[str, str] = {}
        for name, digest in members_raw.items():
            check_member_name(name)
            if name in (MANIFEST_MEMBER, SIGNATURE_MEMBER):
                raise PackageError(f"manifest.members must not list {name}")
            if not isinstance(digest, str) or not _SHA256.match(digest):
                raise PackageError(f"manifest.members[{name!r}] is not a lowercase SHA-256 hex digest")
            members[name] = digest
        hotpatchable = self._bool(top, "hotpatchable", "manifest")
        if not hotpatchable and self._list(top, "functions"):
            raise PackageError("a cold-only package must not list functions to hotpatch")
        blob_size = self._int(top, "blob_size", "manifest", 0, 1 << 31)
        functions = tuple(self._function(item, i, blob_size) for i, item in enumerate(self._list(top, "functions")))
        new_functions = tuple(
            self._new_function(item, i, blob_size) for i, item in enumerate(self._list(top, "new_functions"))
        )
        relocations = tuple(
            self._relocation(item, i, blob_size) for i, item in enumerate(self._list(top, "relocations"))
        )
        unwind_raw = top.get("unwind")
        unwind = None
        if unwind_raw is not None:
            obj = self._obj(unwind_raw, "manifest.unwind")
            unwind = UnwindTable(
                self._int(obj, "offset", "manifest.unwind", 0, blob_size),
                self._int(obj, "count", "manifest.unwind", 0, 1 << 20),
            )
            if unwind.offset + 12 * unwind.count > blob_size:
                raise PackageError("manifest.unwind describes a table beyond the end of the blob")
        cfg = tuple(
            self._bounded(v, f"manifest.cfg_targets[{i}]", 0, blob_size)
            for i, v in enumerate(self._list(top, "cfg_targets"))
        )
        refusals = tuple(
            Refusal(self._str(self._obj(r, "refusal"), "function", "refusal"), self._str(r, "reason", "refusal"))
            for r in self._list(top, "refusals")
        )
        patched_member = self._str(top, "patched_member", "manifest")
        if not patched_member.startswith(MODULE_PREFIX) or patched_member not in members:
            raise PackageError(f"manifest.patched_member {patched_member!r} is not a listed module/ member")
        if hotpatchable:
            if BLOB_MEMBER not in members:
                raise PackageError(f"a hotpatchable package must carry {BLOB_MEMBER}")
            if not functions:
                raise PackageError("a hotpatchable package must patch at least one function")
        module = self._str(top, "module", "manifest")
        base = self._pin(top.get("base"), "manifest.base")
        patched = self._pin(top.get("patched"), "manifest.patched")
        if base.name.lower() != module.lower() or patched.name.lower() != module.lower():
            raise PackageError("manifest.base.name and manifest.patched.name must equal manifest.module")
        return Manifest(
            package_id=self._ident(top, "package_id"),
            version=self._ident(top, "version"),
            module=module,
            base=base,
            patched=patched,
            patched_member=patched_member,
            hotpatchable=hotpatchable,
            members=members,
            description=self._str(top, "description", "manifest", allow_empty=True),
            functions=functions,
            new_functions=new_functions,
            relocations=relocations,
            unwind=unwind,
            cfg_targets=cfg,
            refusals=refusals,
            blob_size=blob_size,
            format=fmt,
            builder=self._str(top, "builder", "manifest", allow_empty=True),
        )

    def _pin(self, raw: Any, where: str) -> ImagePin:
        obj = self._obj(raw, where)
        sha = self._str(obj, "sha256", where)
        if not _SHA256.match(sha):
            raise PackageError(f"{where}.sha256 is not a lowercase SHA-256 hex digest")
        guid = obj.get("pdb_guid")
        if guid is not None and not isinstance(guid, str):
            raise PackageError(f"{where}.pdb_guid must be a string or null")
        age = obj.get("pdb_age")
        if age is not None:
            age = self._int(obj, "pdb_age", where, 0, _U32)
        return ImagePin(
            name=self._filename(obj, where),
            machine=self._int(obj, "machine", where, 0, 0xFFFF),
            time_date_stamp=self._int(obj, "time_date_stamp", where, 0, _U32),
            size_of_image=self._int(obj, "size_of_image", where, 1, _U32),
            checksum=self._int(obj, "checksum", where, 0, _U32),
            sha256=sha,
            image_base=self._int(obj, "image_base", where, 0, (1 << 64) - 1),
            pdb_guid=guid,
            pdb_age=age,
        )

    def _function(self, raw: Any, index: int, blob_size: int) -> PatchedFunction:
        where = f"manifest.functions[{index}]"
        obj = self._obj(raw, where)
        base_rva = self._int(obj, "base_rva", where, 1, _U32)
        entry = self._hex(obj, "entry", where)
        padding = self._hex(obj, "padding", where)
        padding_rva = self._int(obj, "padding_rva", where, 0, _U32)
        if len(entry) < SHORT_JUMP_SIZE or len(entry) > 16:
            raise PackageError(f"{where}.entry must hold 2 to 16 bytes")
        if len(padding) < LONG_JUMP_SIZE or len(set(padding)) != 1 or padding[0] not in PADDING_BYTES:
            raise PackageError(f"{where}.padding must be at least 5 bytes, all 0xCC or all 0x90")
        if padding_rva + len(padding) != base_rva:
            raise PackageError(f"{where}.padding must end exactly at the entry (padding_rva + len == base_rva)")
        blob_offset = self._int(obj, "blob_offset", where, 0, blob_size)
        blob_fn_size = self._int(obj, "blob_size", where, 1, blob_size)
        if blob_offset + blob_fn_size > blob_size:
            raise PackageError(f"{where} lies beyond the end of the blob")
        return PatchedFunction(
            name=self._str(obj, "name", where),
            base_rva=base_rva,
            size=self._int(obj, "size", where, 1, _U32),
            entry=entry,
            padding_rva=padding_rva,
            padding=padding,
            blob_offset=blob_offset,
            blob_size=blob_fn_size,
        )

    def _new_function(self, raw: Any, index: int, blob_size: int) -> NewFunction:
        where = f"manifest.new_functions[{index}]"
        obj = self._obj(raw, where)
        offset = self._int(obj, "blob_offset", where, 0, blob_size)
        size = self._int(obj, "blob_size", where, 1, blob_size)
        if offset + size > blob_size:
            raise PackageError(f"{where} lies beyond the end of the blob")
        return NewFunction(self._str(obj, "name", where), offset, size, self._bool(obj, "address_taken", where))

    def _relocation(self, raw: Any, index: int, blob_size: int) -> Relocation:
        where = f"manifest.relocations[{index}]"
        obj = self._obj(raw, where)
        kind = self._str(obj, "kind", where)
        if kind not in RELOCATION_KINDS:
            raise PackageError(f"{where}.kind {kind!r} is not one of {', '.join(RELOCATION_KINDS)}")
        target = self._str(obj, "target", where)
        if target not in RELOCATION_TARGETS:
            raise PackageError(f"{where}.target {target!r} is not one of {', '.join(RELOCATION_TARGETS)}")
        width = 8 if kind == "abs64" else 4
        offset = self._int(obj, "blob_offset", where, 0, blob_size)
        if offset + width > blob_size:
            raise PackageError(f"{where} patches bytes beyond the end of the blob")
        value = self._int(obj, "value", where, 0, _U32 if target == "base" else blob_size)
        return Relocation(
            blob_offset=offset,
            kind=kind,
            target=target,
            value=value,
            addend=self._int(obj, "addend", where, -(1 << 31), (1 << 31) - 1),
            symbol=self._str(obj, "symbol", where, allow_empty=True),
        )

    # -- primitive checks -------------------------------------------------------------------------------------

    @staticmethod
    def _obj(raw: Any, where: str) -> Dict[str, Any]:
        if not isinstance(raw, dict):
            raise PackageError(f"{where} must be a JSON object")
        return raw

    @staticmethod
    def _list(obj: Dict[str, Any], key: str) -> List[Any]:
        value = obj.get(key, [])
        if not isinstance(value, list):
            raise PackageError(f"manifest.{key} must be a JSON array")
        return value

    @staticmethod
    def _bounded(value: Any, where: str, low: int, high: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise PackageError(f"{where} must be an integer from {low} to {high}")
        return value

    def _int(self, obj: Dict[str, Any], key: str, where: str, low: int, high: int) -> int:
        return self._bounded(obj.get(key), f"{where}.{key}", low, high)

    @staticmethod
    def _bool(obj: Dict[str, Any], key: str, where: str) -> bool:
        value = obj.get(key, False)
        if not isinstance(value, bool):
            raise PackageError(f"{where}.{key} must be true or false")
        return value

    @staticmethod
    def _str(obj: Dict[str, Any], key: str, where: str, allow_empty: bool = False) -> str:
        value = obj.get(key, "" if allow_empty else None)
        if not isinstance(value, str) or (not value and not allow_empty) or len(value) > 4096:
            raise PackageError(f"{where}.{key} must be a{'' if allow_empty else ' non-empty'} string")
        return value

    def _ident(self, obj: Dict[str, Any], key: str) -> str:
        value = self._str(obj, key, "manifest")
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$", value):
            raise PackageError(f"manifest.{key} {value!r} may hold only letters, digits and ._+- (max 128)")
        return value

    def _filename(self, obj: Dict[str, Any], where: str) -> str:
        value = self._str(obj, "name", where)
        if not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.+ -]{0,254}$", value) or value.endswith((".", " ")):
            raise PackageError(f"{where}.name {value!r} is not a plain module file name")
        return value

    def _hex(self, obj: Dict[str, Any], key: str, where: str) -> bytes:
        value = self._str(obj, key, where)
        try:
            return bytes.fromhex(value)
        except ValueError as exc:
            raise PackageError(f"{where}.{key} is not a hex string") from exc
