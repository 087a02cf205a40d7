"""Signed packages: the controller signs with cryptography, the host verifies with pure-Python ecdsa."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import zipfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch import package as pkg
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.errors import SignatureError
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.signature import (
    key_id,
    parse_public_key,
    verify_manifest,
)
from ansible_collections.rebootless.windows.plugins.plugin_utils import _signing

MODULE = b"MZ" + bytes(200)


def _package() -> bytes:
    pin = pkg.ImagePin("appcore.dll", 0x8664, 1, 0x1000, 0, "cd" * 32, 0x180000000)
    manifest = pkg.Manifest(
        package_id="appcore-fix",
        version="2.0.0",
        module="appcore.dll",
        base=pin,
        patched=pin,
        patched_member="module/appcore.dll",
        hotpatchable=False,
        members={"module/appcore.dll": hashlib.sha256(MODULE).hexdigest()},
    )
    out = io.BytesIO()
    pkg.write_package(out, manifest, {"module/appcore.dll": MODULE})
    return out.getvalue()


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _pem(key: Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def test_a_signed_package_verifies_against_its_public_key_in_either_form(key: Ed25519PrivateKey) -> None:
    signed = pkg.read_package(_signing.sign_package(_package(), key))
    for trusted in (_signing.public_key_text(key), _pem(key)):
        decision = verify_manifest(signed.manifest_bytes, signed.signature, [trusted], allow_unsigned=False)
        assert decision.signed
        assert decision.key_id == key_id(parse_public_key(trusted))


def test_signing_is_deterministic(key: Ed25519PrivateKey) -> None:
    assert _signing.sign_package(_package(), key) == _signing.sign_package(_package(), key)


def test_a_manifest_altered_after_signing_is_refused(key: Ed25519PrivateKey) -> None:
    signed = pkg.read_package(_signing.sign_package(_package(), key))
    altered = signed.manifest_bytes.replace(b'"version":"2.0.0"', b'"version":"2.0.1"')
    with pytest.raises(SignatureError, match="does not verify: the manifest was altered"):
        verify_manifest(altered, signed.signature, [_signing.public_key_text(key)], allow_unsigned=True)


def test_a_package_signed_by_an_unknown_key_is_refused_naming_the_key(key: Ed25519PrivateKey) -> None:
    signed = pkg.read_package(_signing.sign_package(_package(), key))
    other = _signing.public_key_text(Ed25519PrivateKey.generate())
    wanted = key_id(parse_public_key(_signing.public_key_text(key)))
    with pytest.raises(SignatureError, match=f"signed by key {wanted}, which is not among the trusted keys"):
        verify_manifest(signed.manifest_bytes, signed.signature, [other], allow_unsigned=True)
    with pytest.raises(SignatureError, match="no trusted keys are configured"):
        verify_manifest(signed.manifest_bytes, signed.signature, [], allow_unsigned=True)


def test_unsigned_packages_need_an_explicit_allow_unsigned() -> None:
    unsigned = pkg.read_package(_package())
    with pytest.raises(SignatureError, match="package is unsigned"):
        verify_manifest(unsigned.manifest_bytes, unsigned.signature, [], allow_unsigned=False)
    decision = verify_manifest(unsigned.manifest_bytes, unsigned.signature, [], allow_unsigned=True)
    assert not decision.signed
    assert "allow_unsigned" in decision.note


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (b"not json", "not valid JSON"),
        (b'{"algorithm": "ed25519"}', "must hold the strings"),
        (b'{"algorithm": "ed25519", "key_id": "x", "signature": "%%%"}', "not valid base64"),
        (b'{"algorithm": "ed25519", "key_id": "x", "signature": "AAAA"}', "is 64 bytes"),
    ],
)
def test_malformed_signatures_are_refused_even_with_allow_unsigned(document: bytes, message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        verify_manifest(b"{}", document, [], allow_unsigned=True)


def test_a_signature_member_swapped_into_another_package_does_not_verify(key: Ed25519PrivateKey) -> None:
    signed = _signing.sign_package(_package(), key)
    with zipfile.ZipFile(io.BytesIO(signed)) as archive:
        document = archive.read(pkg.SIGNATURE_MEMBER)
    other = pkg.read_package(_package())
    manifest = json.loads(other.manifest_bytes)
    manifest["description"] = "another build"
    with pytest.raises(SignatureError, match="does not verify"):
        verify_manifest(pkg.canonical_json(manifest), document, [_signing.public_key_text(key)], allow_unsigned=False)


def test_wrong_trusted_key_text_is_a_clear_error() -> None:
    with pytest.raises(SignatureError, match="32 bytes of base64"):
        parse_public_key("AAAA")
    with pytest.raises(SignatureError, match="not an Ed25519 public key"):
        parse_public_key("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----")


def test_keygen_sign_verify_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    package = tmp_path / "fix.hpk"
    package.write_bytes(_package())
    assert _signing.main(["keygen", "--out", str(tmp_path / "keys")]) == 0
    private = tmp_path / "keys" / "signing-key.pem"
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    assert _signing.main(["sign", "--key", str(private), str(package)]) == 0
    assert _signing.main(["verify", "--trusted", str(tmp_path / "keys" / "signing-key.pub"), str(package)]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["signed"] is True
    other = tmp_path / "other.pub"
    other.write_text(_signing.public_key_text(Ed25519PrivateKey.generate()))
    assert _signing.main(["verify", "--trusted", str(other), str(package)]) == 4


def test_the_signing_key_never_appears_in_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = "-----BEGIN PRIVATE KEY-----\nTOPSECRETMATERIAL\n-----END PRIVATE KEY-----\n"
    monkeypatch.setenv(_signing.KEY_ENV, secret)
    with pytest.raises(SignatureError) as caught:
        _signing.load_private_key()
    assert "TOPSECRET" not in str(caught.value)
    assert "$REBOOTLESS_SIGNING_KEY" in str(caught.value)
    path = tmp_path / "key.pem"
    path.write_text(secret)
    with pytest.raises(SignatureError) as caught:
        _signing.load_private_key(str(path))
    assert "TOPSECRET" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__context__ is not None
