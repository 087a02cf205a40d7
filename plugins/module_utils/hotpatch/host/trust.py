"""Trust policy for a package that passed read_package (signature.py makes the decision).

Signed by a trusted key -> used; unsigned -> used only with allow_unsigned; a signature that is malformed, by an
unknown key, or does not verify -> refused even with allow_unsigned (a broken signature means tampering).
"""

from __future__ import annotations

from typing import Sequence

from ..package import Package
from ..signature import TrustDecision, verify_manifest

__all__ = ["check_trust"]


def check_trust(package: Package, allow_unsigned: bool, trusted_keys: Sequence[str]) -> TrustDecision:
    """The trust decision for ``package``; raises SignatureError (exit code 4) when it must not be used."""
    return verify_manifest(package.manifest_bytes, package.signature, trusted_keys, allow_unsigned)
