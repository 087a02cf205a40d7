"""Run the engine the way an action plugin does (``python -m hotpatch <verb> --request FILE``) or in-process.

    engine = EngineCli(package, state_dir)
    code, result = engine("apply", processes={"pids": [pid]})            # a fresh interpreter, like a host
    code, result = engine("apply", fault="apply_after_blob", ...)        # killed at that step: (99, {})
    code, result = engine.inproc("rollback")                             # same verb inside this process
    proc = engine.spawn("apply", ...); ...; engine.finish(proc)          # two engines at once

Every request uses the Wine backend and allows unsigned packages unless the keys say otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.host.faults import FAULT_ENV, FAULT_EXIT_CODE
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.host.request import parse_request
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.host.verbs import execute

__all__ = ["ENGINE_ROOT", "EngineCli", "journal_records"]

ENGINE_ROOT = Path(__file__).resolve().parents[2] / "plugins" / "module_utils"


class EngineCli:
    """The engine's command line with a fixed package (or none) and state dir; results as decoded JSON."""

    def __init__(self, package: Path | None, state_dir: Path, timeout: float = 120.0) -> None:
        self.package = package
        self.state_dir = state_dir
        self.timeout = timeout

    def request(self, keys: dict[str, Any]) -> dict[str, Any]:
        """The request document for ``keys`` (package, state_dir, wine backend, unsigned allowed by default)."""
        base: dict[str, Any] = {"state_dir": str(self.state_dir), "backend": "wine", "allow_unsigned": True}
        if self.package is not None:
            base["package"] = str(self.package)
        return {**base, **keys}

    def inproc(self, verb: str, **keys: Any) -> tuple[int, dict[str, Any]]:
        """Run ``verb`` inside this process (no interpreter start: for loops of many runs)."""
        code, result = execute(parse_request(verb, self.request(keys)))
        return code, result.to_dict()

    def spawn(self, verb: str, fault: str | None = None, **keys: Any) -> subprocess.Popen[str]:
        """Start ``verb`` as its own engine process and return it without waiting (see :meth:`finish`)."""
        path = self.state_dir.parent / f"request-{verb}-{uuid.uuid4().hex[:8]}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.request(keys)))
        env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
        if fault:
            env[FAULT_ENV] = fault
        return subprocess.Popen(
            [sys.executable, "-m", "hotpatch", verb, "--request", str(path)],
            cwd=ENGINE_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    def finish(self, proc: subprocess.Popen[str]) -> tuple[int, dict[str, Any]]:
        """Wait for an engine from :meth:`spawn`: (exit code, result); (99, {}) when it died at a fault step.

        Asserts the command-line contract: a killed engine prints nothing, any other prints one JSON line."""
        stdout, stderr = proc.communicate(timeout=self.timeout)
        if proc.returncode == FAULT_EXIT_CODE:
            assert stdout == "", f"a killed engine printed {stdout!r}"
            return FAULT_EXIT_CODE, {}
        assert stdout.count("\n") == 1, f"exit {proc.returncode}: {stdout}{stderr}"
        return proc.returncode, dict(json.loads(stdout))

    def __call__(self, verb: str, fault: str | None = None, **keys: Any) -> tuple[int, dict[str, Any]]:
        return self.finish(self.spawn(verb, fault, **keys))


def journal_records(state_dir: Path) -> list[dict[str, Any]]:
    """Open journal records (``<state_dir>/journal/*.json``, settled ones live in ``done/``), oldest first."""
    folder = state_dir / "journal"
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
