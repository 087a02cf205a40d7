"""The signing key from a file (REBOOTLESS_SIGNING_KEY_FILE) keeps key material out of ansible-runner's artifacts.

ansible-runner writes ``artifacts/<id>/command`` (JSON: command, cwd and the WHOLE environment of the run) and
``env/envvars`` (the variables it was given). A job that signs a package (a pipeline step run by AWX or
ansible-runner) with the PEM text in $REBOOTLESS_SIGNING_KEY therefore leaves the key in both files; with the
key in a file and only its path in the environment, nothing the run writes holds key material.
"""

from __future__ import annotations

import base64
import os
import sys
from pathlib import Path

import ansible_runner
import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch import package as pkg
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.errors import SignatureError
from ansible_collections.rebootless.windows.plugins.plugin_utils import _signing
from tests.unit.test_signing import _package

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
HOTPATCH_BUILD = REPO_ROOT / "scripts" / "hotpatch-build"


def _job(package: Path) -> list[dict[str, object]]:
    """A pipeline job's signing step, as an operator would write it: the task that reads the key is no_log."""
    return [
        {
            "name": "sign a hotpatch package",
            "hosts": "localhost",
            "gather_facts": False,
            "tasks": [
                {
                    "name": "Sign (the key comes from the environment the job was given)",
                    "ansible.builtin.command": {"argv": [sys.executable, str(HOTPATCH_BUILD), "sign", str(package)]},
                    "no_log": True,
                    "changed_when": True,
                }
            ],
        }
    ]


def _key_material(pem: bytes) -> dict[str, bytes]:
    """Every form the private key could take in a file the run writes: PEM body lines, raw seed as base64/hex."""
    key = serialization.load_pem_private_key(pem, password=None)
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    lines = [line for line in pem.decode().splitlines() if line and not line.startswith("-----")]
    needles = {f"PEM line {i}": line.encode() for i, line in enumerate(lines)}
    needles["raw seed base64"] = base64.b64encode(raw).rstrip(b"=")
    needles["raw seed hex"] = raw.hex().encode()
    return needles


def _found(root: Path, needles: dict[str, bytes]) -> list[str]:
    hits = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes().replace(b"\\n", b"\n")
        hits += [f"{path.relative_to(root)}: {name}" for name, needle in needles.items() if needle in data]
    return hits


def _run_job(work: Path, env: dict[str, str]) -> tuple[ansible_runner.Runner, Path, Path]:
    package = work / "fix.hpk"
    package.write_bytes(_package())
    private_dir = work / "runner"
    (private_dir / "project").mkdir(parents=True)
    (private_dir / "project" / "sign.yml").write_text(yaml.safe_dump(_job(package), sort_keys=False))
    envvars = {
        "ANSIBLE_LOCALHOST_WARNING": "False",
        "ANSIBLE_NOCOLOR": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        **env,
    }
    result = ansible_runner.run(
        private_data_dir=str(private_dir), playbook="sign.yml", envvars=envvars, verbosity=3, quiet=True
    )
    return result, package, private_dir


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return _signing.generate_keypair(str(tmp_path / "keys"))


@pytest.fixture(autouse=True)
def no_key_in_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (_signing.KEY_ENV, _signing.KEY_FILE_ENV, _signing.PASSPHRASE_ENV):
        monkeypatch.delenv(name, raising=False)


def test_a_job_signing_with_a_key_file_leaves_no_key_material_in_runner_artifacts(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    private, public = keys
    result, package, private_dir = _run_job(tmp_path, {_signing.KEY_FILE_ENV: str(private)})
    stdout = Path(result.config.artifact_dir, "stdout").read_text()
    assert result.status == "successful", stdout[-3000:]
    signed = pkg.read_package(package.read_bytes())
    assert _signing.main(["verify", "--trusted", str(public), str(package)]) == 0 and signed.signature is not None
    # What the run wrote: the environment (with the key's PATH, which is no secret) and the job events.
    command = Path(result.config.artifact_dir, "command").read_text()
    assert str(private) in command
    assert list(Path(result.config.artifact_dir, "job_events").glob("*.json"))
    assert _found(private_dir, _key_material(private.read_bytes())) == []


def test_the_same_job_with_the_pem_text_exported_leaves_the_key_in_command_and_envvars(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    """Why the file matters (and proof that the search above finds the key when it is there)."""
    private, _public = keys
    result, _package_path, private_dir = _run_job(tmp_path, {_signing.KEY_ENV: private.read_text()})
    assert result.status == "successful"
    hits = _found(private_dir, _key_material(private.read_bytes()))
    files = {hit.split(":")[0] for hit in hits}
    assert files == {"env/envvars", str(Path(result.config.artifact_dir, "command").relative_to(private_dir))}


def test_the_key_file_variable_wins_over_the_pem_text_and_a_bad_path_is_named(
    tmp_path: Path, keys: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    private, public = keys
    monkeypatch.setenv(_signing.KEY_ENV, "-----BEGIN PRIVATE KEY-----\nNOTTHEKEY\n-----END PRIVATE KEY-----\n")
    monkeypatch.setenv(_signing.KEY_FILE_ENV, str(private))
    key = _signing.load_private_key()
    assert _signing.public_key_text(key) == public.read_text().strip()
    monkeypatch.setenv(_signing.KEY_FILE_ENV, str(tmp_path / "missing.pem"))
    with pytest.raises(SignatureError, match=r"cannot read signing key file .*missing\.pem"):
        _signing.load_private_key()
    monkeypatch.delenv(_signing.KEY_FILE_ENV)
    monkeypatch.delenv(_signing.KEY_ENV)
    with pytest.raises(SignatureError, match=r"--key or \$REBOOTLESS_SIGNING_KEY_FILE"):
        _signing.load_private_key()
    assert os.environ.get(_signing.KEY_FILE_ENV) is None
