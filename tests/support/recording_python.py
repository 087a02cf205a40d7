"""A host "python" for role tests that records every engine request, then runs the real interpreter.

Modules like win_hotpatch run ``PYTHON engine.pyz VERB --request FILE`` on the host and delete FILE when the task
ends. Pointing the module's ``python`` (the role's ``hotpatch_python``) at this wrapper keeps a copy of each
request, so a test reads what the engine was really asked, while the real engine still does the work.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["EngineCall", "engine_calls", "recording_python"]

_WRAPPER = """#!{python}
import json, os, sys
args = sys.argv[1:]
if "--request" in args and len(args) >= 2:
    with open(args[args.index("--request") + 1], encoding="utf-8") as handle:
        request = json.load(handle)
    with open({log!r}, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({{"verb": args[1], "request": request}}) + "\\n")
os.execv({python!r}, [{python!r}] + args)
"""


@dataclass(frozen=True)
class EngineCall:
    """One engine run: its verb (``plan``, ``apply``, ``kb_install``, ...) and the request document it read."""

    verb: str
    request: dict[str, Any]


def recording_python(directory: Path) -> tuple[Path, Path]:
    """Write the wrapper into ``directory``; returns (wrapper path for ``python``, log path for engine_calls)."""
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "engine-requests.jsonl"
    wrapper = directory / "python"
    wrapper.write_text(_WRAPPER.format(python=sys.executable, log=str(log)))
    wrapper.chmod(0o755)
    return wrapper, log


def engine_calls(log: Path) -> list[EngineCall]:
    """The engine runs recorded in ``log``, in order; [] when none ran."""
    if not log.is_file():
        return []
    return [EngineCall(d["verb"], d["request"]) for d in map(json.loads, log.read_text().splitlines()) if d]
