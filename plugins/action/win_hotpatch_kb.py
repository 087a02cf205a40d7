# Copyright: rebootless.windows contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of rebootless.windows.win_hotpatch_kb: classify a Microsoft KB for this host, install it
without restart, verify, and say whether it hotpatched or needs a reboot."""

from __future__ import annotations

from typing import Any, ClassVar

from ansible_collections.rebootless.windows.plugins.plugin_utils._action_base import (
    EngineAction,
    EngineReply,
    PackageInfo,
)

__all__ = ["ARGUMENT_SPEC", "ActionModule", "kb_result"]

ARGUMENT_SPEC: dict[str, Any] = {
    "path": {"type": "str", "required": True},
    "system_dirs": {"type": "list", "elements": "str"},
    "log_path": {"type": "str"},
    "timeout": {"type": "int", "default": 7200},
    "lock_timeout": {"type": "int", "default": 30},
    "engine_dir": {"type": "str"},
    "python": {"type": "str"},
    "state_dir": {"type": "str"},
}
_SUFFIXES = (".msu", ".cab")
_FACTS = ("product_name", "current_build", "ubr", "os_build", "vbs", "enrolment", "pending_reboot")


def kb_result(document: dict[str, Any]) -> dict[str, Any]:
    """The module's return values from the engine's ``kb_classify`` / ``kb_install`` document."""
    outcome = document.get("result")
    before = document.get("facts") if isinstance(document.get("facts"), dict) else {}
    after = document.get("facts_after") if isinstance(document.get("facts_after"), dict) else None
    predicted = document.get("predicted") if isinstance(document.get("predicted"), dict) else None
    return {
        "changed": bool(document.get("changed")),
        "result": outcome,
        "hotpatched": outcome == "hotpatched",
        "reboot_required": outcome in ("needs_reboot", "would_needs_reboot"),
        "predicted": predicted,
        "ubr_before": (before or {}).get("ubr"),
        "ubr_after": after.get("ubr") if after else None,
        "pending_reboot_reasons": list((after or before or {}).get("pending_reboot_reasons") or []),
        "hotpatch_blockers": list((before or {}).get("hotpatch_blockers") or []),
        "dism": document.get("dism"),
        "reasons": [str(r) for r in document.get("reasons") or []],
        "os": {key: (after or before or {}).get(key) for key in _FACTS},
        "engine_version": document.get("engine_version"),
    }


class ActionModule(EngineAction):
    """win_hotpatch_kb: ``kb_install`` (``kb_classify`` in check mode) on a KB file already on the host."""

    ARGUMENT_SPEC: ClassVar[dict[str, Any]] = ARGUMENT_SPEC

    def verb(self, params: dict[str, Any]) -> str:
        return "kb_classify" if self._task.check_mode else "kb_install"

    def argument_problems(self, params: dict[str, Any]) -> list[str]:
        problems = []
        if not params["path"].lower().endswith(_SUFFIXES):
            problems.append(f"path must name an .msu or .cab file on the host, got {params['path']!r}")
        if not 1 <= params["timeout"] <= 86400:
            problems.append(f"timeout must be from 1 to 86400 seconds, got {params['timeout']}")
        if not 0 <= params["lock_timeout"] <= 86400:
            problems.append(f"lock_timeout must be from 0 to 86400 seconds, got {params['lock_timeout']}")
        if any(not d for d in params.get("system_dirs") or []):
            problems.append("system_dirs must not contain empty paths")
        return problems

    def request(self, params: dict[str, Any]) -> dict[str, Any]:
        request: dict[str, Any] = {
            "path": params["path"],
            "timeout_s": params["timeout"],
            "lock_timeout_s": params["lock_timeout"],
        }
        if params.get("system_dirs"):
            request["system_dirs"] = list(params["system_dirs"])
        if params.get("log_path"):
            request["log_path"] = params["log_path"]
        return request

    def shape(self, params: dict[str, Any], reply: EngineReply, package: PackageInfo | None) -> dict[str, Any]:
        return kb_result(reply.document)

    def failure_message(self, reply: EngineReply) -> str:
        if reply.rc == 1:
            return f"{reply.verb}: the KB did not install: " + ("; ".join(reply.reasons) or "see dism")
        return super().failure_message(reply)
