"""The package format: what the reader accepts, what it refuses, and that the writer is deterministic."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import replace

import pytest

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch import package as pkg
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.errors import PackageError

BLOB = bytes(range(64))
MODULE = b"MZ" + bytes(510)


def _pin(name: str = "appcore.dll") -> pkg.ImagePin:
    return pkg.ImagePin(name, 0x8664, 0x5F000000, 0x20000, 0x1234, "ab" * 32, 0x180000000, None, None)


def _manifest(**changes: object) -> pkg.Manifest:
    manifest = pkg.Manifest(
        package_id="appcore-fix",
        version="2.0.0",
        module="appcore.dll",
        base=_pin(),
        patched=_pin(),
        patched_member="module/appcore.dll",
        hotpatchable=True,
        members={
            pkg.BLOB_MEMBER: hashlib.sha256(BLOB).hexdigest(),
            "module/appcore.dll": hashlib.sha256(MODULE).hexdigest(),
        },
        functions=(
            pkg.PatchedFunction(
                "appcore_handle", 0x1020, 48, bytes.fromhex("488da42400000000"), 0x1000, b"\xcc" * 32, 0, 32
            ),
        ),
        relocations=(pkg.Relocation(3, "rel32", "base", 0x1500, -4, "memcpy"),),
        unwind=pkg.UnwindTable(32, 1),
        blob_size=len(BLOB),
    )
    return replace(manifest, **changes)  # type: ignore[arg-type]


def _write(manifest: pkg.Manifest | None = None) -> bytes:
    buffer = io.BytesIO()
    pkg.write_package(buffer, manifest or _manifest(), {pkg.BLOB_MEMBER: BLOB, "module/appcore.dll": MODULE})
    return buffer.getvalue()


def _rezip(raw: bytes, edit: dict[str, bytes | None]) -> bytes:
    """Copy a package, replacing (bytes) or dropping (None) the named members, adding new ones."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            if info.filename in edit:
                continue
            dst.writestr(info, src.read(info))
        for name, data in edit.items():
            if data is not None:
                dst.writestr(name, data)
    return out.getvalue()


def test_a_written_package_reads_back_to_the_same_manifest() -> None:
    package = pkg.read_package(_write())
    assert package.manifest == _manifest()
    assert package.blob == BLOB
    assert package.patched_module == MODULE
    assert package.signature is None


def test_the_same_inputs_give_byte_identical_packages() -> None:
    assert _write() == _write()


def test_a_tampered_member_is_refused_by_name() -> None:
    raw = _rezip(_write(), {pkg.BLOB_MEMBER: b"\x00" * len(BLOB)})
    with pytest.raises(PackageError, match=r"member code\.bin does not match its SHA-256"):
        pkg.read_package(raw)


@pytest.mark.parametrize("name", ["../evil.dll", "/etc/passwd", "module\\x.dll", "C:/x", "a//b", "./x"])
def test_member_paths_that_could_escape_are_refused(name: str) -> None:
    raw = _rezip(_write(), {name: b"x"})
    with pytest.raises(PackageError, match="member name"):
        pkg.read_package(raw)


def test_an_unlisted_member_is_refused() -> None:
    with pytest.raises(PackageError, match=r"does not list: extra\.bin"):
        pkg.read_package(_rezip(_write(), {"extra.bin": b"x"}))


def test_a_missing_member_is_refused() -> None:
    with pytest.raises(PackageError, match=r"lacks members listed in the manifest: module/appcore\.dll"):
        pkg.read_package(_rezip(_write(), {"module/appcore.dll": None}))


def test_a_truncated_archive_is_refused() -> None:
    raw = _write()
    with pytest.raises(PackageError, match="not a readable zip"):
        pkg.read_package(raw[: len(raw) // 2])


def test_a_zip_bomb_member_is_refused_before_it_is_expanded() -> None:
    bomb = b"\x00" * (8 * 1024 * 1024)
    raw = _rezip(_write(), {"module/appcore.dll": None})
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr("module/appcore.dll", bomb)
    with pytest.raises(PackageError, match="expands"):
        pkg.read_package(out.getvalue())


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("format",), 2, "format 2 is not supported"),
        (("functions", 0, "padding"), "cccc", "at least 5 bytes"),
        (("functions", 0, "padding"), "cccccccc90", "all 0xCC or all 0x90"),
        (("functions", 0, "padding_rva"), 0x1001, "must end exactly at the entry"),
        (("functions", 0, "blob_offset"), 60, "beyond the end of the blob"),
        (("functions", 0, "base_rva"), "0x1020", r"base_rva must be an integer"),
        (("relocations", 0, "kind"), "rel8", "'rel8' is not one of"),
        (("relocations", 0, "blob_offset"), 62, "beyond the end of the blob"),
        (("base", "sha256"), "XYZ", "not a lowercase SHA-256"),
        (("base", "name"), "..\\evil.dll", "not a plain module file name"),
        (("package_id",), "a b", "may hold only letters"),
        (("hotpatchable",), "yes", "must be true or false"),
        (("unwind", "count"), 100, "beyond the end of the blob"),
    ],
)
def test_manifest_fields_of_wrong_type_or_range_are_refused_by_name(
    path: tuple[str | int, ...], value: object, message: str
) -> None:
    data = json.loads(_manifest().to_json())
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(PackageError, match=message):
        pkg.Manifest.from_dict(data)


def test_a_cold_only_package_needs_no_blob_but_lists_no_functions() -> None:
    cold = _manifest(
        hotpatchable=False,
        functions=(),
        relocations=(),
        unwind=None,
        blob_size=0,
        members={"module/appcore.dll": hashlib.sha256(MODULE).hexdigest()},
        refusals=(pkg.Refusal("g_table", "initial value of writable data changed"),),
    )
    buffer = io.BytesIO()
    pkg.write_package(buffer, cold, {"module/appcore.dll": MODULE})
    assert pkg.read_package(buffer.getvalue()).manifest.refusals[0].function == "g_table"
    data = json.loads(cold.to_json())
    data["functions"] = json.loads(_manifest().to_json())["functions"]
    with pytest.raises(PackageError, match="cold-only package must not list functions"):
        pkg.Manifest.from_dict(data)


def test_the_writer_refuses_members_that_do_not_match_the_manifest() -> None:
    with pytest.raises(PackageError, match="does not match its SHA-256"):
        pkg.write_package(io.BytesIO(), _manifest(), {pkg.BLOB_MEMBER: b"other", "module/appcore.dll": MODULE})
