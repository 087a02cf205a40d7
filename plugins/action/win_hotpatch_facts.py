# Copyright: rebootless.windows contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of rebootless.windows.win_hotpatch_facts: the engine's ``inspect`` as ``ansible_facts.hotpatch``."""

from __future__ import annotations

from typing import Any, ClassVar

from ansible_collections.rebootless.windows.plugins.plugin_utils._action_base import (
    EngineAction,
    EngineReply,
    PackageInfo,
)

__all__ = ["ARGUMENT_SPEC", "ActionModule", "hotpatch_facts"]

ARGUMENT_SPEC: dict[str, Any] = {
    "module": {"type": "str"},
    "engine_dir": {"type": "str"},
    "python": {"type": "str"},
    "state_dir": {"type": "str"},
}

# Fact -> keys the engine's ``facts`` object may carry it under (first present wins); absent facts stay None.
_FACT_KEYS: dict[str, tuple[str, ...]] = {
    "os_product": ("product_name", "os_product"),
    "os_build": ("current_build", "os_build"),
    "os_ubr": ("ubr", "os_ubr"),
    "os_edition": ("edition_id",),
    "os_display_version": ("display_version",),
    "wine_version": ("wine_version",),
    "kernel": ("kernel",),
    "hostname": ("hostname",),
    "python_version": ("python_version",),
    "vbs": ("vbs", "vbs_state"),
    "vbs_status": ("vbs_status",),
    "enrolment": ("enrolment", "enrollment"),
    "hotpatch_enrolment": ("hotpatch_enrolment",),
    "hotpatch_ready": ("hotpatch_ready",),
    "pending_reboot": ("pending_reboot", "reboot_pending"),
    "pending_reboot_reasons": ("pending_reboot_reasons", "reboot_reasons"),
}
# List facts: always a list of strings (empty when the engine does not report them).
_LIST_FACTS = ("pending_reboot_reasons", "pending_reboot_optional", "hotpatch_blockers")
_PROCESS_KEYS = ("pid", "windows_pid", "name", "start_time")


def hotpatch_facts(document: dict[str, Any], module: str | None) -> dict[str, Any]:
    """``ansible_facts.hotpatch`` from an ``inspect`` document; every documented key present (None if unknown)."""
    found = document.get("facts")
    raw: dict[str, Any] = found if isinstance(found, dict) else {}
    facts: dict[str, Any] = {
        "platform": document.get("platform") or raw.get("platform"),
        "engine_version": document.get("engine_version"),
    }
    for name, keys in _FACT_KEYS.items():
        facts[name] = next((raw[key] for key in keys if raw.get(key) is not None), None)
    for name in _LIST_FACTS:
        value = raw.get(name)
        facts[name] = [str(item) for item in value] if isinstance(value, list) else []
    facts["applied"] = list(document.get("applied") or raw.get("applied") or [])
    facts["staged"] = list(document.get("staged") or raw.get("staged") or [])
    facts["module"] = module
    listed = document.get("processes")
    processes: list[Any] = listed if isinstance(listed, list) else []
    # inspect reports each process that loads the module with the module's path on disk in ``reason``.
    facts["processes"] = (
        [
            {**{key: item.get(key) for key in _PROCESS_KEYS}, "module_path": item.get("reason")}
            for item in processes
            if isinstance(item, dict)
        ]
        if module
        else []
    )
    return facts


class ActionModule(EngineAction):
    """win_hotpatch_facts: runs ``inspect`` (read-only, so also in check mode)."""

    ARGUMENT_SPEC: ClassVar[dict[str, Any]] = ARGUMENT_SPEC

    def verb(self, params: dict[str, Any]) -> str:
        return "inspect"

    def request(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"module": params["module"]} if params.get("module") else {}

    def shape(self, params: dict[str, Any], reply: EngineReply, package: PackageInfo | None) -> dict[str, Any]:
        return {"changed": False, "ansible_facts": {"hotpatch": hotpatch_facts(reply.document, params.get("module"))}}
