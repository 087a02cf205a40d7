"""The JSON result of a verb (docs/engine-protocol.md, "Result") and the per-process records in it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from .. import ENGINE_VERSION

__all__ = ["FAILED_RESULTS", "ProcessResult", "VerbResult"]

# Per-process results that make the exit code 1.
FAILED_RESULTS = ("refused", "failed")
# Per-process results that changed the process.
CHANGED_RESULTS = ("patched", "rolled_back")


@dataclass
class ProcessResult:
    """One process's outcome. ``code_before``/``code_after``: "base", "patched" or "unknown";
    ``pause_us``: how long its threads were stopped for the switch (microseconds), None when not stopped."""

    pid: int
    name: str
    start_time: str
    windows_pid: Optional[int] = None
    result: str = "not_patched"
    code_before: str = "unknown"
    code_after: str = "unknown"
    pause_us: Optional[int] = None
    reason: Optional[str] = None
    functions: int = 0
    module_base: Optional[int] = None
    attempts: int = 0


@dataclass
class VerbResult:
    """The whole result document; ``to_dict`` gives exactly what ``__main__`` prints."""

    verb: str
    platform: str = ""
    ok: bool = True
    changed: bool = False
    package: Optional[Dict[str, Any]] = None
    processes: List[ProcessResult] = field(default_factory=list)
    cold_patch_required: bool = False
    reasons: List[str] = field(default_factory=list)
    journal: Optional[str] = None
    staged: List[Dict[str, Any]] = field(default_factory=list)
    applied: List[Dict[str, Any]] = field(default_factory=list)
    recovered: List[Dict[str, Any]] = field(default_factory=list)
    facts: Dict[str, Any] = field(default_factory=dict)
    error: Optional[Dict[str, str]] = None

    def add(self, proc: ProcessResult) -> None:
        """Record a process outcome; its reason also goes to ``reasons``."""
        self.processes.append(proc)
        if proc.result in CHANGED_RESULTS:
            self.changed = True
        if proc.reason and proc.result in FAILED_RESULTS:
            self.reasons.append(f"{proc.name} (pid {proc.pid}): {proc.reason}")

    @property
    def exit_code(self) -> int:
        """0, or 1 when any process was refused or failed (errors of the whole verb exit from ``__main__``)."""
        return 1 if any(p.result in FAILED_RESULTS for p in self.processes) else 0

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        data["engine_version"] = ENGINE_VERSION
        data["ok"] = self.error is None and self.exit_code == 0
        if self.error is None:
            data.pop("error")
        return data
