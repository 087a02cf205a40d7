# Copyright: rebootless.windows contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of rebootless.windows.win_hotpatch: apply, roll back, stage or unstage one package."""

from __future__ import annotations

from typing import Any, ClassVar

from ansible_collections.rebootless.windows.plugins.plugin_utils._action_base import (
    EngineAction,
    EngineReply,
    PackageInfo,
)

__all__ = ["ARGUMENT_SPEC", "ActionModule"]

ARGUMENT_SPEC: dict[str, Any] = {
    "package": {"type": "str", "required": True},
    "remote_src": {"type": "bool", "default": False},
    "state": {"type": "str", "default": "present", "choices": ["present", "absent", "staged", "unstaged"]},
    "processes": {
        "type": "dict",
        "options": {
            "names": {"type": "list", "elements": "str"},
            "pids": {"type": "list", "elements": "int"},
        },
    },
    "activeness_check": {"type": "bool", "default": False},
    "retries": {"type": "int", "default": 5},
    "retry_delay_ms": {"type": "int", "default": 20},
    "lock_timeout": {"type": "int", "default": 30},
    "allow_unsigned": {"type": "bool", "default": False},
    "trusted_keys": {"type": "list", "elements": "str", "no_log": False},
    "module_path": {"type": "str"},
    "replace_other_build": {"type": "bool", "default": False},
    "workers": {"type": "int", "default": 8},
    "engine_dir": {"type": "str"},
    "python": {"type": "str"},
    "state_dir": {"type": "str"},
}

# The engine's bounds (host/request.py), checked on the controller so a bad value never reaches the host.
_RANGES = {"retries": (0, 1000), "retry_delay_ms": (0, 60000), "lock_timeout": (0, 86400), "workers": (1, 64)}

# state -> (verb, verb in check mode)
_VERBS = {
    "present": ("apply", "plan"),
    "absent": ("rollback", "plan"),
    "staged": ("stage", "status"),
    "unstaged": ("unstage", "status"),
}
_PROCESS_KEYS = ("pid", "windows_pid", "name", "result", "pause_us", "reason", "code_before", "code_after", "functions")


class ActionModule(EngineAction):
    """win_hotpatch: the package goes to the host once (by SHA-256); the engine does the rest."""

    ARGUMENT_SPEC: ClassVar[dict[str, Any]] = ARGUMENT_SPEC

    def verb(self, params: dict[str, Any]) -> str:
        live, check = _VERBS[params["state"]]
        return check if self._task.check_mode else live

    def package_source(self, params: dict[str, Any]) -> tuple[str, bool] | None:
        return params["package"], bool(params["remote_src"])

    def argument_problems(self, params: dict[str, Any]) -> list[str]:
        problems = [
            f"{name} must be from {low} to {high}, got {params[name]}"
            for name, (low, high) in _RANGES.items()
            if not low <= params[name] <= high
        ]
        processes = params.get("processes") or {}
        if any(pid <= 0 for pid in processes.get("pids") or []):
            problems.append("processes.pids must be positive process ids")
        if any(not name for name in processes.get("names") or []):
            problems.append("processes.names must not contain empty names")
        if not params["package"]:
            problems.append("package must not be empty")
        return problems

    def request(self, params: dict[str, Any]) -> dict[str, Any]:
        request: dict[str, Any] = {
            "activeness_check": params["activeness_check"],
            "retries": params["retries"],
            "retry_delay_ms": params["retry_delay_ms"],
            "lock_timeout_s": params["lock_timeout"],
            "allow_unsigned": params["allow_unsigned"],
            "trusted_keys": list(params["trusted_keys"] or []),
        }
        if params["state"] in ("present", "absent"):
            request["state"] = params["state"]
            request["workers"] = params["workers"]
        processes = params.get("processes") or {}
        selected = {key: list(processes[key]) for key in ("names", "pids") if processes.get(key)}
        if selected:
            request["processes"] = selected
        if params.get("module_path"):
            request["module_path"] = params["module_path"]
        if params["state"] == "staged" and params["replace_other_build"]:
            request["replace_other_build"] = True
        return request

    def shape(self, params: dict[str, Any], reply: EngineReply, package: PackageInfo | None) -> dict[str, Any]:
        document = reply.document
        processes = [{key: item.get(key) for key in _PROCESS_KEYS} for item in reply.processes]
        result: dict[str, Any] = {
            "changed": bool(document.get("changed")),
            "state": params["state"],
            "package": _package(document, package),
            "processes": processes,
            "cold_patch_required": bool(document.get("cold_patch_required")),
            "reasons": reply.reasons,
            "journal": document.get("journal"),
            "staged": list(document.get("staged") or []),
            "engine_version": document.get("engine_version"),
            "platform": document.get("platform"),
        }
        if reply.verb == "plan":
            result["changed"] = any(p["result"] in ("would_patch", "would_roll_back") for p in processes)
        elif reply.verb == "status":
            result["changed"] = _staged(document, result["package"]) != (params["state"] == "staged")
        if self._task.diff and reply.verb in ("apply", "rollback", "plan"):
            result["diff"] = _diff(processes)
        return result


def _package(document: dict[str, Any], package: PackageInfo | None) -> dict[str, Any]:
    """``{id, module, version, sha256}``: the engine's view, else what the controller read."""
    value = document.get("package")
    reported: dict[str, Any] = value if isinstance(value, dict) else {}
    known = package.as_result() if package else {}
    return {key: reported.get(key) or known.get(key) for key in ("id", "module", "version", "sha256")}


def _staged(document: dict[str, Any], package: dict[str, Any]) -> bool:
    """Whether ``status`` lists this package as staged on disk (entries name their package by id)."""
    return any(
        isinstance(entry, dict) and entry.get("package") == package.get("id") and entry.get("state") == "staged"
        for entry in document.get("staged") or []
    )


def _diff(processes: list[dict[str, Any]]) -> dict[str, str]:
    """Per process, which code it runs before -> after, as two texts Ansible shows as a diff."""
    before, after = [], []
    for proc in processes:
        label = f"{proc.get('name')} (pid {proc.get('pid')})"
        before.append(f"{label}: {proc.get('code_before') or 'unknown'}\n")
        after.append(f"{label}: {proc.get('code_after') or 'unknown'}\n")
    return {"before": "".join(before), "after": "".join(after)}
