"""Trust policy for a package that passed read_package: signed by a trusted key, or explicitly allowed unsigned.

Signature verification arrives with the signing issue; until then a package that carries ``manifest.sig`` is
refused (it asks for a check this engine cannot make), and an unsigned one is accepted only with allow_unsigned.
"""

from __future__ import annotations

from typing import Sequence

from ..errors import SignatureError
from ..package import SIGNATURE_MEMBER, Package

__all__ = ["check_trust"]


def check_trust(package: Package, allow_unsigned: bool, trusted_keys: Sequence[str]) -> None:
    """Raise SignatureError (exit code 4) unless the engine may use ``package``; changes nothing."""
    if package.signature is None:
        if allow_unsigned:
            return
        raise SignatureError(
            f"package {package.manifest.package_id} {package.manifest.version} is unsigned: sign it with a "
            "trusted key, or set allow_unsigned: true to accept unsigned packages on purpose"
        )
    if not trusted_keys:
        raise SignatureError(
            f"package {package.manifest.package_id} carries {SIGNATURE_MEMBER} but no trusted key was given: "
            "pass the signer's public key in trusted_keys"
        )
    raise SignatureError(
        f"package {package.manifest.package_id} carries {SIGNATURE_MEMBER}, which this engine version cannot verify "
        "yet: upgrade the engine, or rebuild the package unsigned and set allow_unsigned: true"
    )
