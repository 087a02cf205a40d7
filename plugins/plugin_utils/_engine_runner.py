# Internal to rebootless.windows: not a public API, may change without notice.
"""Build the host engine as one zipapp, deterministically, once per controller run.

The archive holds:

``hotpatch/``
    The engine package, copied from ``plugins/module_utils/hotpatch/`` (``.py`` files only).
``pefile.py``, ``ordlookup/``, ``ecdsa/``, ``six.py``
    From the controller's environment: pefile reads PE images, ecdsa verifies package signatures; hosts need
    nothing but Python. Their license files go under ``licenses/``.
``__main__.py``
    Runs ``hotpatch.__main__.main()`` and exits with its return code.

Every member gets a fixed timestamp and mode and members are sorted, so the same sources always give the same
bytes and the same name ``engine-<sha12>.pyz`` (first 12 hex digits of the archive's SHA-256). Hosts cache the
archive under that name, so a controller with unchanged sources never transfers the engine twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import io
import os
import stat
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ENGINE_PACKAGE_DIR", "EngineArchive", "build_engine", "engine_archive"]

ENGINE_PACKAGE_DIR = Path(__file__).resolve().parent.parent / "module_utils" / "hotpatch"

# Pure-Python dependencies of the engine shipped inside the archive: pefile (+ ordlookup) reads PE images,
# ecdsa (+ six) verifies Ed25519 package signatures (signature.py).
VENDORED = ("pefile", "ordlookup", "ecdsa", "six")
_DISTRIBUTIONS = {"ordlookup": "pefile"}

ROOT_MAIN = (
    b"# rebootless.windows host engine: python engine.pyz <verb> --request FILE (docs/engine-protocol.md)\n"
    b"import sys\n"
    b"\n"
    b"from hotpatch.__main__ import main\n"
    b"\n"
    b"sys.exit(main())\n"
)

KEEP_ARCHIVES = 8  # archives of older sources kept in the cache (a parallel run may still be sending one)
_FORMAT = b"rebootless engine archive 1"  # bump when build_engine's output changes for the same members
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_ZIP_MODE = (stat.S_IFREG | 0o644) << 16
_lock = threading.Lock()
_built: dict[tuple[str, str], EngineArchive] = {}


@dataclass(frozen=True)
class EngineArchive:
    """A built engine zipapp on the controller: ``path`` to the file, ``sha256`` hex digest of its bytes."""

    path: str
    sha256: str

    @property
    def name(self) -> str:
        """File name hosts cache it under: ``engine-<first 12 hex digits of sha256>.pyz``."""
        return f"engine-{self.sha256[:12]}.pyz"


def engine_members(engine_dir: Path = ENGINE_PACKAGE_DIR, pefile_dir: Path | None = None) -> dict[str, bytes]:
    """Archive member name -> bytes for the engine, its vendored dependencies and the root ``__main__.py``.

    ``pefile_dir`` overrides where pefile is taken from (tests); every other dependency comes from the
    controller's installed copy. Raises FileNotFoundError when the engine package or a dependency is missing
    (install the collection's requirements.txt on the controller).
    """
    if not (engine_dir / "__init__.py").is_file():
        raise FileNotFoundError(f"engine package not found at {engine_dir}")
    members: dict[str, bytes] = {"__main__.py": ROOT_MAIN}
    members.update(_tree(engine_dir, "hotpatch/"))
    for name in VENDORED:
        if name == "pefile" and pefile_dir is not None:
            members["pefile.py"] = (pefile_dir / "pefile.py").read_bytes()
            members.update(_tree(pefile_dir / "ordlookup", "ordlookup/"))
            continue
        members.update(_vendored(name))
    return members


def _tree(directory: Path, prefix: str) -> dict[str, bytes]:
    """The ``.py`` files under ``directory`` (no caches, no ``test_*.py``), named ``prefix + relative path``."""
    found = {}
    for source in sorted(directory.rglob("*.py")):
        relative = source.relative_to(directory)
        if "__pycache__" in relative.parts or source.name.startswith("test_"):
            continue
        found[prefix + relative.as_posix()] = source.read_bytes()
    return found


def _vendored(name: str) -> dict[str, bytes]:
    """A top-level module or package of the controller's environment, plus its distribution's license files."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"{name} is not installed on the controller: install requirements.txt")
    origin = Path(spec.origin)
    if spec.submodule_search_locations:  # a package: ship the .py files of its folder
        members = _tree(origin.parent, name + "/")
    else:
        members = {origin.name: origin.read_bytes()}
    distribution = _DISTRIBUTIONS.get(name, name)
    try:
        files = importlib.metadata.files(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for item in files:
        if item.name.upper().startswith(("LICENSE", "COPYING")):
            members[f"licenses/{distribution}-{item.name}"] = Path(str(item.locate())).read_bytes()
    return members


def build_engine(members: dict[str, bytes]) -> bytes:
    """Deterministic zip bytes for ``members`` (sorted names, fixed dates and modes, deflate level 9)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.external_attr = _ZIP_MODE
            info.create_system = 3
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, members[name], compresslevel=9)
    return buffer.getvalue()


def cache_dir() -> Path:
    """Where built archives live: ``$XDG_CACHE_HOME/rebootless`` or ``~/.cache/rebootless``, else the tmp dir."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    for candidate in (Path(base) / "rebootless", Path(tempfile.gettempdir()) / f"rebootless-{os.getuid()}"):
        try:
            candidate.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(candidate, os.W_OK):
            return candidate
    raise OSError("no writable cache directory for the engine archive: set XDG_CACHE_HOME to a writable directory")


def engine_archive(engine_dir: Path = ENGINE_PACKAGE_DIR, pefile_dir: Path | None = None) -> EngineArchive:
    """Build (or find in the cache) the engine zipapp for the current sources; memoised per process.

    Ansible runs each task in a forked worker, so the cache on disk is what makes this "once per controller
    run": an index file named by the digest of the inputs (member names and bytes) records the archive's
    SHA-256, so a worker only reads and hashes the sources (~1 ms) instead of compressing them again (~120 ms).
    Files are written atomically (temporary name, then rename): parallel workers never see a partial archive.
    """
    key = (str(engine_dir), str(pefile_dir))
    with _lock:
        if key in _built and os.path.isfile(_built[key].path):
            return _built[key]
        members = engine_members(engine_dir, pefile_dir)
        cache = cache_dir()
        index = cache / f"engine-inputs-{_inputs_digest(members)[:32]}.txt"
        digest = _read_index(index)
        if digest is None or not _has_digest(cache / f"engine-{digest[:12]}.pyz", digest):
            payload = build_engine(members)
            digest = hashlib.sha256(payload).hexdigest()
            _write_atomic(cache / f"engine-{digest[:12]}.pyz", payload)
            _write_atomic(index, digest.encode("ascii") + b"\n")
            _prune(cache)
        _built[key] = EngineArchive(str(cache / f"engine-{digest[:12]}.pyz"), digest)
        return _built[key]


def _prune(cache: Path, keep: int = KEEP_ARCHIVES) -> None:
    """Drop all but the ``keep`` newest archives and index files (older controller runs; never the current one)."""
    for pattern in ("engine-*.pyz", "engine-inputs-*.txt"):
        files = sorted(cache.glob(pattern), key=_mtime, reverse=True)
        for old in files[keep:]:
            with contextlib.suppress(OSError):
                old.unlink()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed by a parallel run meanwhile
        return 0.0


def _inputs_digest(members: dict[str, bytes]) -> str:
    digest = hashlib.sha256(_FORMAT)
    for name in sorted(members):
        digest.update(name.encode("utf-8") + b"\0" + str(len(members[name])).encode("ascii") + b"\0")
        digest.update(members[name])
    return digest.hexdigest()


def _read_index(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else None


def _write_atomic(path: Path, payload: bytes) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".engine-", suffix=".part")
    with os.fdopen(handle, "wb") as out:
        out.write(payload)
    os.replace(temporary, path)


def _has_digest(path: Path, digest: str) -> bool:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == digest
    except OSError:
        return False
