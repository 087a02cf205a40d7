"""The request document a verb runs with (docs/engine-protocol.md, "Request"): parsed strictly, with defaults."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

from ..errors import RequestError
from ..fields import known_verb, opt_str, request_object, seconds, strings, whole, yes_no

__all__ = [
    "CHANGING_VERBS",
    "DEFAULT_WORKERS",
    "MAX_WORKERS",
    "VERBS",
    "Request",
    "default_state_dir",
    "load_request",
    "parse_request",
]

VERBS = ("inspect", "plan", "apply", "verify", "rollback", "stage", "unstage", "status", "recover")
CHANGING_VERBS = ("apply", "rollback", "stage", "unstage", "recover")
_NEEDS_PACKAGE = ("plan", "apply", "verify", "rollback", "stage", "unstage")
_KEYS = (
    "package",
    "state_dir",
    "backend",
    "module",
    "processes",
    "state",
    "activeness_check",
    "retries",
    "retry_delay_ms",
    "lock_timeout_s",
    "allow_unsigned",
    "trusted_keys",
    "module_path",
    "replace_other_build",
    "workers",
)
# Worker threads for apply, plan and rollback: each process is handled wholly by one (ptrace and a debug attach
# bind a process to the thread that attached it); the engine never starts more workers than processes.
DEFAULT_WORKERS = 8
MAX_WORKERS = 64


@dataclass(frozen=True)
class Request:
    """A validated request; ``names`` compare case-insensitively, ``pids`` match the PID or the Windows PID;
    ``workers`` is how many processes apply, plan and rollback handle at once (1 to MAX_WORKERS)."""

    verb: str
    package: Optional[str] = None
    state_dir: str = ""
    backend: str = "auto"
    module: Optional[str] = None
    names: Tuple[str, ...] = ()
    pids: Tuple[int, ...] = ()
    state: str = "present"
    activeness_check: bool = False
    retries: int = 5
    retry_delay_ms: int = 20
    lock_timeout_s: float = 30.0
    allow_unsigned: bool = False
    trusted_keys: Tuple[str, ...] = field(default=())
    module_path: Optional[str] = None
    replace_other_build: bool = False
    workers: int = DEFAULT_WORKERS


def default_state_dir() -> str:
    """``C:\\ProgramData\\rebootless\\state`` on Windows, ``/var/lib/rebootless/state`` elsewhere."""
    if os.name == "nt":
        root = os.environ.get("PROGRAMDATA") or "C:\\ProgramData"
        return os.path.join(root, "rebootless", "state")
    return "/var/lib/rebootless/state"


def load_request(verb: str, path: str) -> Request:
    """Read and parse the request file; raises RequestError when it is unreadable or invalid."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise RequestError(f"cannot read request file {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise RequestError(f"request file {path} is not valid UTF-8 JSON: {exc}") from exc
    return parse_request(verb, data)


def parse_request(verb: str, data: Any) -> Request:
    """Validate a decoded request for ``verb``; raises RequestError naming the first bad key."""
    known_verb(verb, VERBS)
    data = request_object(data, _KEYS, "the engine")
    package = opt_str(data, "package")
    if verb in _NEEDS_PACKAGE and not package:
        raise RequestError(f"verb {verb} needs 'package' (path of the hotpatch package on this host)")
    backend = opt_str(data, "backend") or "auto"
    if backend not in ("auto", "windows", "wine"):
        raise RequestError(f"backend {backend!r} is not one of auto, windows, wine")
    state = opt_str(data, "state") or "present"
    if state not in ("present", "absent"):
        raise RequestError(f"state {state!r} is not one of present, absent")
    names, pids = _processes(data.get("processes"))
    keys = strings(
        data.get("trusted_keys", []), "trusted_keys must be a list of non-empty strings (base64 public keys)"
    )
    return Request(
        verb=verb,
        package=package,
        state_dir=opt_str(data, "state_dir") or default_state_dir(),
        backend=backend,
        module=opt_str(data, "module"),
        names=names,
        pids=pids,
        state=state,
        activeness_check=yes_no(data, "activeness_check", False),
        retries=whole(data, "retries", 5, 0, 1000),
        retry_delay_ms=whole(data, "retry_delay_ms", 20, 0, 60000),
        lock_timeout_s=seconds(data, "lock_timeout_s", 30.0, 0, 86400),
        allow_unsigned=yes_no(data, "allow_unsigned", False),
        trusted_keys=keys,
        module_path=opt_str(data, "module_path"),
        replace_other_build=yes_no(data, "replace_other_build", False),
        workers=whole(data, "workers", DEFAULT_WORKERS, 1, MAX_WORKERS),
    )


def _processes(raw: Any) -> Tuple[Tuple[str, ...], Tuple[int, ...]]:
    if raw is None:
        return (), ()
    if not isinstance(raw, dict) or set(raw) - {"names", "pids"}:
        raise RequestError("processes must be an object with optional 'names' and 'pids' lists")
    names = strings(raw.get("names") or [], "processes.names must be a list of executable names (e.g. appsvc.exe)")
    pids: List[int] = raw.get("pids") or []
    if not isinstance(pids, list) or not all(isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in pids):
        raise RequestError("processes.pids must be a list of positive integers")
    return names, tuple(pids)
