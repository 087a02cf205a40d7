"""The KB verbs: ``kb_classify`` (predict, change nothing) and ``kb_install`` (classify, install with no
restart, verify). Reads as its steps: facts -> open the KB -> classify -> install -> verify -> report.

``KbRequest`` is parsed strictly from the request document (keys in ``KB_KEYS``); ``run_kb`` returns
(exit code, result dict). Exit codes follow the engine's (errors.py): 0 done (including already installed and
not applicable), 1 the install failed (reason in ``reasons``), 2 bad request, 3 the KB is not a cabinet or
cannot be opened, 6 another engine run holds the host lock, 7 the registry or a tool could not be used.

``kb_install`` changes the host, so it holds the same host-wide lock as apply and rollback (host/lock.py, under
``state_dir``) from its first facts to its last: an engine patching processes and a KB install never overlap.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from .. import ENGINE_VERSION
from ..errors import EngineError, RequestError
from ..fields import known_verb, opt_str, request_object, seconds, strings
from ..host.lock import HostLock
from ..host.request import default_state_dir
from .cabinet import Extractor, default_extractor, open_kb
from .classify import Classification, classify_files, installed_lookup
from .dism import dism_add_package_argv, outcome_of
from .facts import OsUpdateFacts, osupdate_facts
from .registry import Registry
from .runner import Runner, system_tool

__all__ = ["KB_CHANGING_VERBS", "KB_KEYS", "KB_VERBS", "KbRequest", "KbTools", "parse_kb_request", "run_kb"]

KB_VERBS = ("kb_classify", "kb_install")
KB_CHANGING_VERBS = ("kb_install",)  # these hold the host lock
KB_KEYS = ("path", "system_dirs", "log_path", "timeout_s", "arch", "state_dir", "lock_timeout_s")


@dataclass(frozen=True)
class KbRequest:
    """``path``: the .msu/.cab on the host; ``system_dirs``: where installed files are looked up (default
    %SystemRoot%\\System32); ``log_path``: DISM's /LogPath; ``timeout_s``: DISM's limit; ``arch``: overrides
    ``platform.machine()`` (tests); ``state_dir``: where the host lock lives (default as for the other verbs);
    ``lock_timeout_s``: how long ``kb_install`` waits for another engine run to release the lock."""

    verb: str
    path: str
    system_dirs: Tuple[str, ...] = ()
    log_path: Optional[str] = None
    timeout_s: float = 7200.0
    arch: Optional[str] = None
    state_dir: str = ""
    lock_timeout_s: float = 30.0


@dataclass
class KbTools:
    """What the verbs touch on the host; tests pass strict fakes for ``registry`` and ``runner``."""

    registry: Registry
    runner: Runner
    extractor: Optional[Extractor] = None
    workdir: Optional[str] = None  # parent of the temporary extraction directory


def parse_kb_request(verb: str, data: Any) -> KbRequest:
    """Validate a decoded request; raises RequestError naming the first bad key."""
    known_verb(verb, KB_VERBS)
    data = request_object(data, KB_KEYS, verb)
    path = data.get("path")
    if not isinstance(path, str) or not path:
        raise RequestError(f"{verb} needs 'path': the .msu or .cab file on this host")
    dirs = strings(data.get("system_dirs") or [], "system_dirs must be a list of directories on the host")
    log_path = opt_str(data, "log_path")
    timeout = seconds(data, "timeout_s", 7200, 1, 86400)
    arch = data.get("arch")
    if arch is not None and arch not in ("AMD64", "ARM64", "amd64", "arm64", "x86_64", "aarch64"):
        raise RequestError("arch must be AMD64 or ARM64")
    state_dir = opt_str(data, "state_dir") or default_state_dir()
    lock_timeout = seconds(data, "lock_timeout_s", 30.0, 0, 86400)
    return KbRequest(verb, path, dirs, log_path, timeout, arch, state_dir, lock_timeout)


@dataclass
class KbResult:
    """The result document (docs/os-updates.md, "Result")."""

    verb: str
    changed: bool = False
    result: Optional[str] = None
    predicted: Optional[Dict[str, Any]] = None
    facts: Dict[str, Any] = field(default_factory=dict)
    facts_after: Optional[Dict[str, Any]] = None
    dism: Optional[Dict[str, Any]] = None
    reasons: List[str] = field(default_factory=list)
    error: Optional[Dict[str, str]] = None

    def to_dict(self, code: int) -> Dict[str, Any]:
        return {
            "verb": self.verb,
            "ok": code == 0,
            "changed": self.changed,
            "engine_version": ENGINE_VERSION,
            "platform": "windows",
            "result": self.result,
            "predicted": self.predicted,
            "facts": self.facts,
            "facts_after": self.facts_after,
            "dism": self.dism,
            "reasons": self.reasons,
            "error": self.error,
        }


def run_kb(request: KbRequest, tools: KbTools) -> Tuple[int, Dict[str, Any]]:
    """Run ``kb_classify`` or ``kb_install``; errors of the whole verb become ``error`` and their exit code."""
    result = KbResult(request.verb)
    try:
        if request.verb in KB_CHANGING_VERBS:
            with HostLock(request.state_dir or default_state_dir(), request.lock_timeout_s):
                code = _run(request, tools, result)
        else:
            code = _run(request, tools, result)
    except EngineError as exc:
        result.error = {"kind": exc.kind, "message": str(exc)}
        code = exc.exit_code
    return code, result.to_dict(code)


def _run(request: KbRequest, tools: KbTools, result: KbResult) -> int:
    arch = request.arch or platform.machine()
    before = osupdate_facts(tools.registry, tools.runner, arch)
    result.facts = before.as_dict()
    if not os.path.isfile(request.path):
        raise RequestError(f"no KB file at {request.path}: copy it to the host first (win_copy / win_get_url)")
    prediction = _classify(request, tools, before)
    result.predicted = prediction.as_dict()
    if request.verb == "kb_classify":
        result.result = "would_hotpatch" if prediction.verdict == "hotpatch" else f"would_{prediction.verdict}"
        result.reasons = list(prediction.reasons)
        return 0
    return _install(request, tools, before, prediction, arch, result)


def _classify(request: KbRequest, tools: KbTools, facts: OsUpdateFacts) -> Classification:
    extractor = tools.extractor or default_extractor(tools.runner)
    workdir = tempfile.mkdtemp(prefix="rebootless-kb-", dir=tools.workdir)
    try:
        files = open_kb(request.path, workdir, extractor)
        dirs = list(request.system_dirs) or [system_tool("System32")]
        return classify_files(files, installed_lookup(dirs), facts.blockers)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _install(
    request: KbRequest,
    tools: KbTools,
    before: OsUpdateFacts,
    prediction: Classification,
    arch: str,
    result: KbResult,
) -> int:
    argv = dism_add_package_argv(request.path, request.log_path)
    try:
        done = tools.runner.run(argv, request.timeout_s)
    except (OSError, subprocess.SubprocessError) as exc:
        raise _ToolError(f"cannot run DISM: {exc}") from exc
    outcome = outcome_of(done.rc)
    result.dism = {
        "argv": argv,
        "rc": outcome.rc,
        "symbol": outcome.symbol,
        "result": outcome.result,
        "message": outcome.message,
        "log_path": request.log_path,
    }
    if not outcome.ok:
        result.result = "failed"
        result.reasons = [f"DISM: {outcome.message} ({outcome.symbol}, exit {outcome.rc})"]
        return 1
    if outcome.result in ("already_installed", "not_applicable"):
        result.result = outcome.result
        result.reasons = [outcome.message]
        return 0
    after = osupdate_facts(tools.registry, tools.runner, arch)
    result.facts_after = after.as_dict()
    result.changed = True
    ubr_moved = before.version.ubr != after.version.ubr
    if outcome.reboot_required or after.reboot.pending:
        result.result = "needs_reboot"
        why = [outcome.message] if outcome.reboot_required else []
        why += ["reboot pending after install: " + ", ".join(after.reboot.reasons)] if after.reboot.pending else []
        if prediction.verdict == "hotpatch":
            why.append("the KB was predicted to hotpatch; Windows asked for a restart anyway")
        result.reasons = why
        return 0
    result.result = "hotpatched"
    result.reasons = [
        f"installed with no restart pending; UBR {before.version.ubr} -> {after.version.ubr}"
        + ("" if ubr_moved else " (unchanged: Windows may report the new UBR only after its servicing completes)")
    ]
    return 0


class _ToolError(EngineError):
    exit_code = 7
    kind = "backend"
