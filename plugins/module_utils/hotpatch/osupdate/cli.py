"""Entry of the KB verbs for the engine's command line: ``python engine.pyz kb_install --request FILE``.

``run_kb_file(verb, path)`` reads the request and runs it with the host's real registry and tools; it returns
(exit code, result dict) like the engine's other verbs, so ``hotpatch.__main__`` only dispatches to it.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Tuple

from ..errors import BackendError, RequestError
from .kb import KB_VERBS, KbTools, parse_kb_request, run_kb
from .runner import SubprocessRunner

__all__ = ["KB_VERBS", "host_tools", "run_kb_file"]


def host_tools() -> KbTools:
    """The real registry and runner; raises BackendError off Windows (the KB verbs patch Windows itself)."""
    if os.name != "nt":
        raise BackendError("the KB verbs install Windows updates: they need a Windows host, not Wine or Linux")
    from .registry import WinRegistry

    return KbTools(WinRegistry(), SubprocessRunner())


def run_kb_file(verb: str, path: str, tools: Optional[KbTools] = None) -> Tuple[int, Dict[str, Any]]:
    """Parse the request file at ``path`` and run ``verb``; any error of the whole verb is in the result."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        request = parse_kb_request(verb, data)
        chosen = tools or host_tools()
    except OSError as exc:
        error: Any = RequestError(f"cannot read request file {path}: {exc.strerror}")
        return error.exit_code, _failed(verb, error)
    except ValueError as exc:
        error = RequestError(f"request file {path} is not valid UTF-8 JSON: {exc}")
        return error.exit_code, _failed(verb, error)
    except (RequestError, BackendError) as exc:
        return exc.exit_code, _failed(verb, exc)
    return run_kb(request, chosen)


def _failed(verb: str, exc: Any) -> Dict[str, Any]:
    from .kb import KbResult

    return KbResult(verb, error={"kind": exc.kind, "message": str(exc)}).to_dict(exc.exit_code)
