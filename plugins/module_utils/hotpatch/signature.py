"""Package signatures: Ed25519 (RFC 8032) over the exact bytes of ``manifest.json``.

``manifest.sig`` is canonical JSON: ``{"algorithm": "ed25519", "key_id": "<16 hex>", "signature": "<base64>"}``.
``key_id`` is the first 16 hex digits of the SHA-256 of the raw 32-byte public key: it names the key in reports
and lets the verifier pick it without trying every key. The manifest lists the SHA-256 of every other member, so
a valid signature over the manifest covers the whole package.

The host verifies with the pure-Python ``ecdsa`` package, shipped inside the engine zipapp (the host runtime
has no compiled crypto library); the controller signs with ``cryptography`` (plugin_utils/_signing.py).
Trusted keys are given by the operator as base64 of the raw 32-byte key or as a PEM SubjectPublicKeyInfo.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Dict, Optional, Sequence, Tuple

from .errors import SignatureError

__all__ = ["ALGORITHM", "TrustDecision", "key_id", "parse_public_key", "signature_document", "verify_manifest"]

ALGORITHM = "ed25519"
_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")  # SubjectPublicKeyInfo header of an Ed25519 key (RFC 8410)


class TrustDecision:
    """Outcome of the trust check: ``signed`` (bool), ``key_id`` of the key that verified, ``note`` for reports."""

    def __init__(self, signed: bool, key_id: Optional[str], note: str) -> None:
        self.signed = signed
        self.key_id = key_id
        self.note = note

    def as_dict(self) -> Dict[str, object]:
        return {"signed": self.signed, "key_id": self.key_id, "note": self.note}


def key_id(public_key: bytes) -> str:
    """16 hex digits naming a raw 32-byte Ed25519 public key."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def parse_public_key(text: str) -> bytes:
    """Raw 32-byte public key from base64 (raw key) or PEM (SubjectPublicKeyInfo); raises SignatureError."""
    stripped = text.strip()
    if stripped.startswith("-----BEGIN PUBLIC KEY-----"):
        body = "".join(line for line in stripped.splitlines() if not line.startswith("-----"))
        der = _b64(body, "trusted key PEM")
        if len(der) != 44 or not der.startswith(_SPKI_PREFIX):
            raise SignatureError(
                "trusted key PEM is not an Ed25519 public key (expected RFC 8410 SubjectPublicKeyInfo)"
            )
        return der[len(_SPKI_PREFIX) :]
    raw = _b64(stripped, "trusted key")
    if len(raw) != 32:
        raise SignatureError(f"trusted key must be 32 bytes of base64 (an Ed25519 public key), got {len(raw)} bytes")
    return raw


def signature_document(public_key: bytes, signature: bytes) -> bytes:
    """The ``manifest.sig`` member for a signature made with ``public_key``'s private key."""
    doc = {"algorithm": ALGORITHM, "key_id": key_id(public_key), "signature": base64.b64encode(signature).decode()}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("ascii")


def verify_manifest(
    manifest_bytes: bytes, signature_member: Optional[bytes], trusted_keys: Sequence[str], allow_unsigned: bool
) -> TrustDecision:
    """Decide whether to trust a package.

    A signature that verifies with a trusted key -> trusted. No signature -> trusted only with allow_unsigned
    (the note says so, for the report). A signature that is malformed, made by an unknown key or that does not
    verify -> SignatureError, even with allow_unsigned: a broken signature means tampering, not absence.
    """
    if signature_member is None:
        if allow_unsigned:
            return TrustDecision(False, None, "package is unsigned; accepted because allow_unsigned is set")
        raise SignatureError(
            "package is unsigned: sign it (hotpatch-build sign --key KEY) and give the public key as a trusted "
            "key, or set allow_unsigned explicitly"
        )
    algorithm, wanted, signature = _parse_signature(signature_member)
    keys = {key_id(raw): raw for raw in (parse_public_key(text) for text in trusted_keys)}
    if not keys:
        raise SignatureError(f"package is signed by key {wanted} but no trusted keys are configured on this host")
    if wanted not in keys:
        raise SignatureError(f"package is signed by key {wanted}, which is not among the trusted keys")
    if algorithm != ALGORITHM:
        raise SignatureError(f"signature algorithm {algorithm!r} is not supported (only {ALGORITHM})")
    if not _ed25519_verify(keys[wanted], signature, manifest_bytes):
        raise SignatureError(f"signature by key {wanted} does not verify: the manifest was altered after signing")
    return TrustDecision(True, wanted, f"signed by trusted key {wanted}")


def _parse_signature(member: bytes) -> Tuple[str, str, bytes]:
    try:
        doc = json.loads(member.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise SignatureError(f"manifest.sig is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), str) for k in ("algorithm", "key_id", "signature")):
        raise SignatureError("manifest.sig must hold the strings algorithm, key_id and signature")
    signature = _b64(doc["signature"], "manifest.sig signature")
    if len(signature) != 64:
        raise SignatureError(f"an Ed25519 signature is 64 bytes, manifest.sig holds {len(signature)}")
    return doc["algorithm"], doc["key_id"], signature


def _ed25519_verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        from ecdsa import BadSignatureError, VerifyingKey  # type: ignore[import-untyped]
        from ecdsa.curves import Ed25519  # type: ignore[import-untyped]
        from ecdsa.errors import MalformedPointError  # type: ignore[import-untyped]
    except ImportError as exc:  # the zipapp ships ecdsa; a hand-made engine copy might not
        raise SignatureError("cannot verify signatures: the ecdsa package is missing from the engine") from exc
    try:
        return bool(VerifyingKey.from_string(public_key, curve=Ed25519).verify(signature, message))
    except (BadSignatureError, MalformedPointError, ValueError, AssertionError):
        return False


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise SignatureError(f"{what} is not valid base64") from exc
