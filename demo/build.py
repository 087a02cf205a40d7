"""Build the AppSvc demo service (appsvc.exe) and its appcore.dll variants with mingw-w64 gcc.

Outputs go to ``.cache/demo-build/<key>/`` where key hashes the sources, this script (flags), and the compiler's
``--version``; a build happens in a temporary folder renamed into place, so concurrent callers never see half a
build. Layout of a build::

    appsvc.exe                 the service; imports appcore.dll by name
    v1/appcore.dll             shipped build with the GET bounds bug (GET 5 leaks an API key)
    v2/appcore.dll             the fix (-DAPPCORE_V2): GET 5 -> "ERR index out of range", VERSION 1.0.1
    v1-mismatch/appcore.dll    v1 behaviour, another build id: a different base image (TimeDateStamp, CheckSum,
                               SHA-256), so a v1 -> v2 hotpatch package must refuse it
    build.json                 key, compiler, flags, and per file: TimeDateStamp, CheckSum, SizeOfImage, SHA-256

Builds are deterministic: ``-Wl,--no-insert-timestamp`` leaves TimeDateStamp 0, then a fixed stamp per variant
is written and the PE CheckSum recomputed (pefile), as a release linker would set both. Sources are compiled by
relative name from the temporary folder so no absolute path lands in the COFF symbol table, which is kept
(no ``-s``) so the patch builder can name every function.

CLI: ``python demo/build.py [--force]`` prints build.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pefile

__all__ = ["APPCORE_VARIANTS", "BuildError", "DemoBuild", "build"]

DEMO_DIR = Path(__file__).resolve().parent
REPO_ROOT = DEMO_DIR.parent
SOURCE_DIR = DEMO_DIR / "service"
DEFAULT_CACHE = REPO_ROOT / ".cache" / "demo-build"
CC = "x86_64-w64-mingw32-gcc"

COMMON_FLAGS = ["-O2", "-Wall", "-Wextra", "-Werror", "-fno-ident"]
LINK_FLAGS = ["-Wl,--no-insert-timestamp", "-Wl,--disable-auto-image-base"]
# One preferred image base for every appcore.dll build (the MSVC default for 64-bit DLLs): ld's automatic base
# hashes the output path, which would make builds differ by folder name.
APPCORE_IMAGE_BASE = "-Wl,--image-base,0x180000000"
# variant -> (extra compiler flags, TimeDateStamp written after linking)
APPCORE_VARIANTS: dict[str, tuple[list[str], int]] = {
    "v1": (['-DAPPCORE_BUILD_ID="demo-1"'], 0x65F00000),
    "v2": (['-DAPPCORE_BUILD_ID="demo-1"', "-DAPPCORE_V2"], 0x65F10000),
    "v1-mismatch": (['-DAPPCORE_BUILD_ID="demo-1-rebuild"'], 0x65F20000),
}
APPSVC_TIMESTAMP = 0x65F00000
SOURCES = ("appcore.c", "appcore.h", "appsvc.c")


class BuildError(RuntimeError):
    """The demo service could not be built; the message carries the compiler output."""


@dataclass(frozen=True)
class DemoBuild:
    """One cached build: absolute paths of the service image and of each appcore.dll variant."""

    key: str
    root: Path
    appsvc_exe: Path
    appcore: dict[str, Path]

    def appcore_dll(self, variant: str) -> Path:
        """Path of appcore.dll for variant ("v1", "v2", "v1-mismatch"); raises KeyError for another name."""
        return self.appcore[variant]


def _compiler_version() -> str:
    try:
        out = subprocess.run([CC, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise BuildError(f"{CC} not usable ({exc}); install gcc-mingw-w64-x86-64") from exc
    return out.strip()


def _build_key(compiler: str) -> str:
    h = hashlib.sha256()
    h.update(compiler.encode())
    h.update(Path(__file__).read_bytes())  # flags, variants and stamps live here
    for name in SOURCES:
        h.update(name.encode() + b"\0" + (SOURCE_DIR / name).read_bytes())
    return h.hexdigest()[:16]


def _run(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")


def _stamp(path: Path, timestamp: int) -> dict[str, object]:
    """Write a fixed TimeDateStamp and the matching CheckSum; return the image's identity fields."""
    pe = pefile.PE(str(path))
    try:
        pe.FILE_HEADER.TimeDateStamp = timestamp
        pe.OPTIONAL_HEADER.CheckSum = 0
        data = bytearray(pe.write())
        pe.close()
        pe = pefile.PE(data=bytes(data))
        pe.OPTIONAL_HEADER.CheckSum = pe.generate_checksum()
        data = bytearray(pe.write())
        fields = {
            "time_date_stamp": pe.FILE_HEADER.TimeDateStamp,
            "check_sum": pe.OPTIONAL_HEADER.CheckSum,
            "size_of_image": pe.OPTIONAL_HEADER.SizeOfImage,
            "image_base": pe.OPTIONAL_HEADER.ImageBase,
        }
    finally:
        pe.close()
    path.write_bytes(data)
    fields["sha256"] = hashlib.sha256(data).hexdigest()
    return fields


def _build_into(out: Path, compiler: str, key: str) -> None:
    src = out / "src"
    shutil.copytree(SOURCE_DIR, src, ignore=shutil.ignore_patterns("*.dll", "*.exe", "*.o", "*.a"))
    files: dict[str, dict[str, object]] = {}
    for variant, (flags, stamp) in APPCORE_VARIANTS.items():
        vdir = out / variant
        vdir.mkdir()
        dll = vdir / "appcore.dll"
        implib = src / f"libappcore-{variant}.a"
        _run(
            [
                CC,
                *COMMON_FLAGS,
                *flags,
                "-shared",
                "-o",
                str(dll),
                "appcore.c",
                *LINK_FLAGS,
                APPCORE_IMAGE_BASE,
                f"-Wl,--out-implib,{implib}",
            ],
            cwd=src,
        )
        files[f"{variant}/appcore.dll"] = _stamp(dll, stamp)
    exe = out / "appsvc.exe"
    _run([CC, *COMMON_FLAGS, "-o", str(exe), "appsvc.c", "libappcore-v1.a", "-lws2_32", *LINK_FLAGS], cwd=src)
    files["appsvc.exe"] = _stamp(exe, APPSVC_TIMESTAMP)
    shutil.rmtree(src)
    info = {
        "key": key,
        "compiler": compiler.splitlines()[0],
        "cflags": COMMON_FLAGS,
        "ldflags": [*LINK_FLAGS, APPCORE_IMAGE_BASE],
        "variants": {v: flags for v, (flags, _stamp) in APPCORE_VARIANTS.items()},
        "files": files,
    }
    (out / "build.json").write_text(json.dumps(info, indent=2) + "\n")


def _as_build(key: str, root: Path) -> DemoBuild:
    return DemoBuild(
        key=key,
        root=root,
        appsvc_exe=root / "appsvc.exe",
        appcore={v: root / v / "appcore.dll" for v in APPCORE_VARIANTS},
    )


def build(cache_dir: Path | None = None, force: bool = False) -> DemoBuild:
    """Build (or reuse from cache) appsvc.exe and every appcore.dll variant.

    cache_dir defaults to ``<repo>/.cache/demo-build``. Raises BuildError when mingw-w64 is missing or a
    compile fails.
    """
    cache = cache_dir or DEFAULT_CACHE
    compiler = _compiler_version()
    key = _build_key(compiler)
    final = cache / key
    if force and final.exists():
        shutil.rmtree(final)
    if (final / "build.json").is_file():
        return _as_build(key, final)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=cache))
    try:
        _build_into(tmp, compiler, key)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "build.json").is_file():  # not a concurrent builder that won the race
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return _as_build(key, final)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even when the cache has this build")
    parser.add_argument("--cache-dir", type=Path, default=None, help=f"default {DEFAULT_CACHE}")
    args = parser.parse_args(argv)
    try:
        result = build(args.cache_dir, force=args.force)
    except BuildError as exc:
        print(f"build failed: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write((result.root / "build.json").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
