"""The engine zipapp: deterministic, complete, runnable by a bare Python, cached by content."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ansible_collections.rebootless.windows.plugins.plugin_utils import _engine_runner
from ansible_collections.rebootless.windows.plugins.plugin_utils._engine_runner import (
    ENGINE_PACKAGE_DIR,
    build_engine,
    engine_archive,
    engine_members,
)

ROOT = Path(__file__).resolve().parents[3]


def fake_engine(root: Path, exit_code: int) -> Path:
    package = root / "hotpatch"
    (package / "host").mkdir(parents=True)
    (package / "__init__.py").write_text("ENGINE_VERSION = 'test'\n")
    (package / "host" / "__init__.py").write_text("")
    (package / "__main__.py").write_text(
        "import sys\nfrom .host import __name__ as _h\n"
        f"def main():\n    print('{{\"verb\": \"' + sys.argv[1] + '\"}}')\n    return {exit_code}\n"
    )
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "junk.py").write_text("raise SystemExit('must not be shipped')\n")
    return package


def test_same_sources_give_byte_identical_archives() -> None:
    first = build_engine(engine_members())
    second = build_engine(engine_members())
    assert first == second
    with zipfile.ZipFile(__import__("io").BytesIO(first)) as archive:
        assert all(info.date_time == (1980, 1, 1, 0, 0, 0) for info in archive.infolist())
        names = archive.namelist()
    assert names == sorted(names)


def test_archive_holds_the_engine_package_pefile_and_a_root_main() -> None:
    members = engine_members()
    expected = {
        "hotpatch/" + p.relative_to(ENGINE_PACKAGE_DIR).as_posix()
        for p in ENGINE_PACKAGE_DIR.rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert expected <= set(members)
    assert {"__main__.py", "pefile.py", "ordlookup/__init__.py", "ecdsa/__init__.py", "six.py"} <= set(members)
    assert {"licenses/pefile-LICENSE", "licenses/ecdsa-LICENSE", "licenses/six-LICENSE"} <= set(members)
    assert not any(name.rsplit("/", 1)[-1].startswith("test_") for name in members)
    assert not any("__pycache__" in name for name in members)


def test_real_archive_imports_the_engine_and_pefile_with_nothing_else_on_the_path(tmp_path: Path) -> None:
    archive = tmp_path / "engine.pyz"
    archive.write_bytes(build_engine(engine_members()))
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import pefile, hotpatch.package; print(hotpatch.package.__file__)"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, str(archive)], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == str(archive / "hotpatch" / "package.py")


def oldest_host_python() -> str | None:
    """A Python 3.8 interpreter (the oldest the engine supports on hosts), found like scripts/ci/find_python.sh."""
    candidates = [str(ROOT / ".cache" / "pythons" / "python3.8"), shutil.which("python3.8") or ""]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.8.*/bin/python3.8")))
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            probe = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 8))"],
                capture_output=True,
                text=True,
                check=False,
            )
            if probe.stdout.strip() == "True":
                return candidate
    return None


def test_real_archive_answers_inspect_on_the_oldest_host_python(tmp_path: Path) -> None:
    python = oldest_host_python()
    if python is None:
        pytest.skip("no Python 3.8 here: install it (pyenv) to check the engine on the oldest host Python")
    archive = tmp_path / "engine.pyz"
    archive.write_bytes(build_engine(engine_members()))
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"state_dir": str(tmp_path / "state")}))
    done = subprocess.run(
        [python, "-I", str(archive), "inspect", "--request", str(request)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert (document["verb"], document["facts"]["python_version"][:4]) == ("inspect", "3.8.")


def test_real_archive_verifies_a_package_signature_on_the_oldest_host_python(tmp_path: Path) -> None:
    python = oldest_host_python()
    if python is None:
        pytest.skip("no Python 3.8 here: install it (pyenv) to check the engine on the oldest host Python")
    from ansible_collections.rebootless.windows.tests.unit.plugins.action_harness import make_package, sign

    archive = tmp_path / "engine.pyz"
    archive.write_bytes(build_engine(engine_members()))
    package = tmp_path / "fix.hpk"
    make_package(package)
    trusted = sign(package)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from hotpatch.package import read_package\n"
        "from hotpatch.signature import verify_manifest\n"
        "checked = read_package(sys.argv[2])\n"
        "print(verify_manifest(checked.manifest_bytes, checked.signature, [sys.argv[3]], False).signed)\n"
    )
    done = subprocess.run(
        [python, "-I", "-S", "-c", code, str(archive), str(package), trusted],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (done.returncode, done.stdout.strip()) == (0, "True"), done.stderr


def test_root_main_runs_hotpatch_main_and_exits_with_its_code(tmp_path: Path) -> None:
    archive = tmp_path / "engine.pyz"
    archive.write_bytes(build_engine(engine_members(fake_engine(tmp_path / "src", exit_code=6))))
    done = subprocess.run(
        [sys.executable, "-I", str(archive), "status", "--request", "x"], capture_output=True, text=True, check=False
    )
    assert (done.returncode, done.stdout.strip()) == (6, '{"verb": "status"}')


def test_engine_archive_is_cached_under_its_digest_and_rebuilt_when_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(_engine_runner, "_built", {})
    source = fake_engine(tmp_path / "src", exit_code=0)

    built = engine_archive(source)
    path = Path(built.path)
    assert path.parent == tmp_path / "cache" / "rebootless"
    assert path.name == built.name == f"engine-{built.sha256[:12]}.pyz"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == built.sha256
    assert engine_archive(source) is built  # memoised for the rest of the run

    path.unlink()
    again = engine_archive(source)
    assert again == built and path.is_file()
    index = [p.name for p in path.parent.iterdir() if p.name.startswith("engine-inputs-")]
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, *index])  # no temporary file left
    assert len(index) == 1


def test_a_new_worker_reuses_the_cached_archive_without_rebuilding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(_engine_runner, "_built", {})
    source = fake_engine(tmp_path / "src", exit_code=0)
    built = engine_archive(source)

    monkeypatch.setattr(_engine_runner, "_built", {})  # as in a freshly forked worker

    def no_build(members: dict[str, bytes]) -> bytes:
        raise AssertionError("rebuilt although the cache holds this archive")

    monkeypatch.setattr(_engine_runner, "build_engine", no_build)
    assert engine_archive(source) == built

    (source / "__init__.py").write_text("ENGINE_VERSION = 'changed'\n")  # new sources: a new archive
    monkeypatch.setattr(_engine_runner, "build_engine", build_engine)
    monkeypatch.setattr(_engine_runner, "_built", {})  # the next controller run
    assert engine_archive(source).sha256 != built.sha256


def test_the_cache_keeps_only_the_newest_archives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    source = fake_engine(tmp_path / "src", exit_code=0)
    built = []
    for version in range(_engine_runner.KEEP_ARCHIVES + 3):
        (source / "__init__.py").write_text(f"ENGINE_VERSION = '{version}'\n")
        monkeypatch.setattr(_engine_runner, "_built", {})
        built.append(engine_archive(source))
        os.utime(built[-1].path, (version, version))  # mtimes in build order, whatever the clock's resolution
    cache = Path(built[-1].path).parent
    assert len(list(cache.glob("engine-*.pyz"))) == _engine_runner.KEEP_ARCHIVES
    assert Path(built[-1].path).is_file() and not Path(built[0].path).exists()
