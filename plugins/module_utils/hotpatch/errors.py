"""Errors of the hotpatch engine, each with the exit code the command line reports.

Exit codes are part of the engine's contract with the action plugins (documented in ``__main__``):
0 success, 1 some processes failed or were refused (per-process reasons in the JSON), 2 bad request,
3 package rejected, 4 signature rejected, 5 image rejected, 6 another engine holds the host lock,
7 platform/backend failure, 8 journal damaged or incomplete beyond automatic recovery.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "CallLeftRunning",
    "EngineError",
    "ImageError",
    "JournalError",
    "LockBusyError",
    "PackageError",
    "RequestError",
    "SignatureError",
]


class EngineError(Exception):
    """Base of every error the engine reports; ``exit_code`` and ``kind`` go into the JSON result."""

    exit_code = 1
    kind = "engine"


class RequestError(EngineError):
    """The request document is malformed or names an unknown verb or option."""

    exit_code = 2
    kind = "request"


class PackageError(EngineError):
    """The hotpatch package is malformed, tampered, too large or unsafe; nothing on the host was changed."""

    exit_code = 3
    kind = "package"


class SignatureError(PackageError):
    """The package is unsigned or its signature does not verify against a trusted key."""

    exit_code = 4
    kind = "signature"


class ImageError(EngineError):
    """A PE image is malformed, of another machine, or is not the base image the package is pinned to."""

    exit_code = 5
    kind = "image"


class LockBusyError(EngineError):
    """Another engine holds the host-wide lock for longer than the request allows."""

    exit_code = 6
    kind = "lock"


class BackendError(EngineError):
    """The platform refused an operation (access denied, policy, process gone); carries the OS reason."""

    exit_code = 7
    kind = "backend"


class CallLeftRunning(BackendError):
    """A call into the target did not return in time and was left to finish on its own thread (aborting it
    half-way could leave a lock of the target taken for good); its effects may still happen later."""


class JournalError(EngineError):
    """A journal record is damaged or cannot be replayed; the operator must inspect the named file."""

    exit_code = 8
    kind = "journal"
