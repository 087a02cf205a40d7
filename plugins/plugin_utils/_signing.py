# Internal to rebootless.windows: controller-side package signing. Not a public API.
"""Sign hotpatch packages with Ed25519 (``cryptography``), generate keys, check signatures before transfer.

Signing is a separate step from building on purpose: a pipeline can build where the code is and sign where the
key is. The private key is a PEM file (PKCS#8, unencrypted or with a passphrase from
REBOOTLESS_SIGNING_KEY_PASSPHRASE), named by ``--key`` or by REBOOTLESS_SIGNING_KEY_FILE (a path: safe in an
environment that ansible-runner or AWX records), or, last, the PEM text itself in REBOOTLESS_SIGNING_KEY (which
ansible-runner copies into its artifacts: see docs/builder.md, "Keeping the signing key out of job artifacts").
The key is never logged, never written into the package, and errors never quote it.

Command line (build pipelines)::

    python -m ansible_collections.rebootless.windows.plugins.plugin_utils._signing keygen --out DIR
    python -m ansible_collections.rebootless.windows.plugins.plugin_utils._signing sign --key FILE fix.hpk
    python -m ansible_collections.rebootless.windows.plugins.plugin_utils._signing verify --trusted PUB fix.hpk
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sys
from pathlib import Path

try:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
except ImportError:  # the controller lacks cryptography: every entry point says so (requirements.txt lists it)
    HAS_CRYPTOGRAPHY = False
else:
    HAS_CRYPTOGRAPHY = True

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.errors import SignatureError
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.package import read_package, write_package
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.signature import (
    signature_document,
    verify_manifest,
)

__all__ = ["KEY_ENV", "KEY_FILE_ENV", "generate_keypair", "load_private_key", "public_key_text", "sign_package"]

KEY_ENV = "REBOOTLESS_SIGNING_KEY"
KEY_FILE_ENV = "REBOOTLESS_SIGNING_KEY_FILE"
PASSPHRASE_ENV = "REBOOTLESS_SIGNING_KEY_PASSPHRASE"


def load_private_key(path: str | None = None) -> Ed25519PrivateKey:
    """The signing key from ``path`` (PEM file), else the file $REBOOTLESS_SIGNING_KEY_FILE names, else the PEM
    text in $REBOOTLESS_SIGNING_KEY.

    Raises SignatureError naming the source (never the key) when it is missing, unreadable or not Ed25519.
    """
    _require_cryptography()
    path = path or os.environ.get(KEY_FILE_ENV)
    if path:
        try:
            pem = Path(path).read_bytes()
        except OSError as exc:
            raise SignatureError(f"cannot read signing key file {path}: {exc.strerror}") from exc
        source = f"signing key file {path}"
    elif os.environ.get(KEY_ENV):
        pem = os.environ[KEY_ENV].encode()
        source = f"${KEY_ENV}"
    else:
        raise SignatureError(f"no signing key: give a key file (--key or ${KEY_FILE_ENV}) or set ${KEY_ENV}")
    passphrase = os.environ.get(PASSPHRASE_ENV)
    try:
        key = serialization.load_pem_private_key(pem, password=passphrase.encode() if passphrase else None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise SignatureError(f"{source} is not a readable PEM private key (wrong format or passphrase)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{source} is not an Ed25519 key")
    return key


def public_key_text(key: Ed25519PrivateKey) -> str:
    """Base64 of the raw 32-byte public key: the form operators put into trusted keys."""
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def sign_package(package: bytes, key: Ed25519PrivateKey) -> bytes:
    """Return ``package`` with ``manifest.sig`` added (or replaced); the package is verified first.

    Ed25519 is deterministic, so signing the same package with the same key gives byte-identical output.
    """
    _require_cryptography()
    checked = read_package(package)
    raw_public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    document = signature_document(raw_public, key.sign(checked.manifest_bytes))
    out = io.BytesIO()
    write_package(out, checked.manifest, checked.members, signature=document)
    return out.getvalue()


def generate_keypair(directory: str) -> tuple[Path, Path]:
    """Write ``signing-key.pem`` (mode 0600) and ``signing-key.pub`` (base64 raw public key) into ``directory``."""
    _require_cryptography()
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private = folder / "signing-key.pem"
    public = folder / "signing-key.pub"
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    descriptor = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)
    public.write_text(public_key_text(key) + "\n")
    return private, public


def _require_cryptography() -> None:
    if not HAS_CRYPTOGRAPHY:
        raise SignatureError("signing needs the Python package 'cryptography' on the controller (see requirements.txt)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hotpatch-sign", description="Sign and verify rebootless hotpatch packages.")
    verbs = parser.add_subparsers(dest="verb", required=True)
    keygen = verbs.add_parser("keygen", help="create an Ed25519 key pair")
    keygen.add_argument("--out", required=True, help="folder for signing-key.pem and signing-key.pub")
    sign = verbs.add_parser("sign", help="add manifest.sig to a package, in place or to --out")
    sign.add_argument("--key", help=f"PEM private key file (default: ${KEY_FILE_ENV}, then the PEM text in ${KEY_ENV})")
    sign.add_argument("--out", help="write the signed package here instead of in place")
    sign.add_argument("package")
    verify = verbs.add_parser("verify", help="check a package's signature against trusted public keys")
    verify.add_argument("--trusted", action="append", default=[], help="public key file (base64 or PEM)")
    verify.add_argument("package")
    args = parser.parse_args(argv)
    try:
        if args.verb == "keygen":
            private, public = generate_keypair(args.out)
            print(json.dumps({"private_key": str(private), "public_key": str(public)}))
        elif args.verb == "sign":
            signed = sign_package(Path(args.package).read_bytes(), load_private_key(args.key))
            Path(args.out or args.package).write_bytes(signed)
            print(json.dumps({"package": args.out or args.package, "signed": True}))
        else:
            package = read_package(args.package)
            trusted = [Path(path).read_text() for path in args.trusted]
            decision = verify_manifest(package.manifest_bytes, package.signature, trusted, allow_unsigned=False)
            print(json.dumps(decision.as_dict()))
    except (SignatureError, OSError) as exc:
        print(f"hotpatch-sign: {exc}", file=sys.stderr)
        return 4
    except Exception as exc:  # PackageError and friends: name the problem, no traceback for operators
        print(f"hotpatch-sign: {exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
