# Copyright: rebootless.windows contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter ``rebootless.windows.hotpatch_decide``: hotpatch, cold path or skip for one host, with the reason.

Inputs are what the role already holds: the host's ``ansible_facts.hotpatch`` (win_hotpatch_facts), the result of
``win_hotpatch`` run in check mode (the engine's ``plan`` verb), and the policy. The decision table, first match wins:

====  =====================================================================  ========  ==========================
row   condition                                                              decision  reason starts with
====  =====================================================================  ========  ==========================
1     the plan failed as a whole (package/signature rejected, lock; or a     fail      ``plan failed``
      process failed for a reason a restart would not fix)
2     every matching process already runs this package's code (hotpatched,   skip      ``already applied``
      or the staged cold-patched module loaded)
3     the package is staged on disk and no process still runs the base code  skip      ``cold patch in place``
4     policy ``hotpatch_force_cold``                                         cold      ``policy``
5     an earlier run rolled this package back on this host (marker), unless  cold      ``rolled back here``
      ``hotpatch_retry_rolled_back``
6     package cold-only, or the engine says a restart is needed (base        cold      the engine's reasons
      image mismatch, refusal)
7     no running process loads the module                                    cold      ``no running process``
8     otherwise                                                              hotpatch  ``N process(es)``
====  =====================================================================  ========  ==========================
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Decision", "decide", "hotpatch_decide"]

_HOTPATCHABLE_RESULTS = {"would_patch", "patched"}
_DONE_RESULTS = {"already_patched", "patched"}


@dataclass(frozen=True)
class Decision:
    """``action`` is hotpatch | cold | skip | fail; ``row`` is the table row that matched (for the report)."""

    action: str
    reason: str
    row: int


def _identity(entry: Any) -> tuple[str, str, str]:
    """(id, version, sha256) of a package mapping, of an engine journal entry (``{"package": id, "version": ...}``
    or ``{"package": {...}}``), or of a bare id string; unknown parts are empty."""
    if isinstance(entry, str):
        return (entry, "", "")
    if not isinstance(entry, dict):
        return ("", "", "")
    nested = entry.get("package")
    if isinstance(nested, dict):
        return _identity(nested)
    ident = entry.get("id") or (nested if isinstance(nested, str) else "")
    return (str(ident or ""), str(entry.get("version") or ""), str(entry.get("sha256") or ""))


def _listed(packages: Any, wanted: tuple[str, str, str]) -> bool:
    """True when ``wanted`` is among ``packages``: same SHA-256 when both know it, else same id (and version when
    both know it)."""
    ident, version, sha = wanted
    if not ident and not sha:
        return False
    for entry in packages or []:
        e_id, e_version, e_sha = _identity(entry)
        if sha and e_sha:
            if sha == e_sha:
                return True
        elif ident and e_id == ident and (not version or not e_version or version == e_version):
            return True
    return False


def _path_key(path: Any) -> str:
    return str(path or "").replace("\\", "/").lower()


def _staged_loaded(facts: dict[str, Any], wanted: tuple[str, str, str]) -> str:
    """Path of this package's staged module when a running process has that very file loaded (the cold patch is in
    effect, not an in-memory hotpatch), else ""."""
    loaded = {_path_key(p.get("module_path")) for p in facts.get("processes") or [] if isinstance(p, dict)}
    for entry in facts.get("staged") or []:
        if (
            isinstance(entry, dict)
            and entry.get("path")
            and _listed([entry], wanted)
            and _path_key(entry["path"]) in loaded
        ):
            return str(entry["path"])
    return ""


def decide(
    facts: dict[str, Any] | None,
    plan: dict[str, Any] | None,
    force_cold: bool = False,
    marker: dict[str, Any] | None = None,
    retry_rolled_back: bool = False,
) -> Decision:
    """Apply the module's decision table to one host's facts, check-mode plan and rollback marker.

    ``marker`` is the JSON the role leaves on a host after rolling this package back ({package, reason, at}).
    """
    facts = facts or {}
    plan = plan or {}
    reasons = [str(r) for r in plan.get("reasons") or [] if r]
    # Exit code 1 is per-process (refused/failed processes): a restart may fix those, so the table goes on.
    if plan.get("failed") and not (plan.get("engine_rc") == 1 and plan.get("cold_patch_required")):
        message = plan.get("msg") or "; ".join(reasons) or "no message"
        return Decision("fail", f"plan failed: {message}", 1)
    processes = [p for p in plan.get("processes") or [] if isinstance(p, dict)]
    results = [str(p.get("result") or "") for p in processes]
    key = _identity(plan.get("package"))
    if processes and all(r == "already_patched" for r in results):
        loaded = _staged_loaded(facts, key)
        if loaded:
            return Decision(
                "skip",
                f"already applied: {len(processes)} process(es) run the cold-patched module (staged {loaded} loaded)",
                2,
            )
        return Decision("skip", f"already applied in {len(processes)} process(es)", 2)
    staged = _listed(facts.get("staged") or facts.get("staged_packages"), key)
    if staged and not any(
        p.get("code_before") == "base" or p.get("result") in _HOTPATCHABLE_RESULTS for p in processes
    ):
        return Decision(
            "skip", "cold patch in place: the patched module is staged and no process runs the base code", 3
        )
    if force_cold:
        return Decision("cold", "policy: hotpatch_force_cold is set", 4)
    if marker and not retry_rolled_back:
        why = str(marker.get("reason") or "post-health failed")
        when = f" at {marker['at']}" if marker.get("at") else ""
        return Decision("cold", f"rolled back here{when} ({why}); set hotpatch_retry_rolled_back to try again", 5)
    raw_package = plan.get("package")
    package: dict[str, Any] = raw_package if isinstance(raw_package, dict) else {}
    if package.get("hotpatchable") is False:
        return Decision("cold", "package is cold-only: " + ("; ".join(reasons) or "the builder refused a hotpatch"), 6)
    if plan.get("cold_patch_required"):
        return Decision("cold", "; ".join(reasons) or "the engine requires a restart for this host", 6)
    if not processes:
        return Decision("cold", "no running process loads the module: stage the patched module on disk", 7)
    would = sum(1 for r in results if r in _HOTPATCHABLE_RESULTS)
    done = sum(1 for r in results if r in _DONE_RESULTS)
    return Decision("hotpatch", f"{would} process(es) to hotpatch, {done} already patched", 8)


def hotpatch_decide(
    plan: Any, facts: Any = None, force_cold: bool = False, marker: Any = None, retry_rolled_back: bool = False
) -> dict[str, Any]:
    """Jinja: ``plan | rebootless.windows.hotpatch_decide(facts, force_cold, marker, retry)`` -> ``{action, reason, row}``."""
    return asdict(
        decide(
            facts if isinstance(facts, dict) else None,
            plan if isinstance(plan, dict) else None,
            bool(force_cold),
            marker if isinstance(marker, dict) else None,
            bool(retry_rolled_back),
        )
    )


class FilterModule:
    """Ansible entry point."""

    def filters(self) -> dict[str, Any]:
        return {"hotpatch_decide": hotpatch_decide}
