"""OS-update facts of a Windows host for ``inspect`` and ``kb_install``: version, VBS, enrolment, reboot state.

``osupdate_facts(registry, runner, arch)`` returns ``OsUpdateFacts``; ``as_dict()`` gives the engine's ``facts``
keys: ``product_name``, ``current_build`` (str), ``ubr`` (int), ``edition_id``, ``display_version`` (from
``SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion``), ``vbs`` / ``vbs_status`` / ``vbs_source`` / ``vbs_error``
(vbs.py), ``enrolment`` (``enrolled``/``not_enrolled``) and ``hotpatch_enrolment`` (enrolment.py),
``pending_reboot`` / ``pending_reboot_reasons`` / ``pending_reboot_optional`` (pending_reboot.py) and
``hotpatch_ready`` / ``hotpatch_blockers``: whether this host can take a hotpatch KB at all, and why not.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from ..errors import EngineError
from .enrolment import Enrolment, read_enrolment
from .pending_reboot import PendingReboot, pending_reboot
from .registry import Registry
from .runner import Runner
from .vbs import VbsState, read_vbs

__all__ = ["NT_CURRENT_VERSION", "OsUpdateFacts", "OsVersion", "os_version", "osupdate_facts", "windows_facts"]

NT_CURRENT_VERSION = r"SOFTWARE\Microsoft\Windows NT\CurrentVersion"


@dataclass(frozen=True)
class OsVersion:
    """``current_build``: CurrentBuild (REG_SZ, e.g. "26100"); ``ubr``: update build revision (REG_DWORD)."""

    product_name: Optional[str]
    current_build: Optional[str]
    ubr: Optional[int]
    edition_id: Optional[str]
    display_version: Optional[str]

    @property
    def build(self) -> Optional[str]:
        """``<CurrentBuild>.<UBR>`` (e.g. 26100.2894), the form Microsoft's release notes use; None if unknown."""
        return f"{self.current_build}.{self.ubr}" if self.current_build and self.ubr is not None else None


def os_version(registry: Registry) -> OsVersion:
    """Windows version values (None where absent); raises RegistryError when a read is refused."""

    def text(name: str) -> Optional[str]:
        value = registry.value(NT_CURRENT_VERSION, name)
        return value.as_str() if value is not None else None

    ubr = registry.value(NT_CURRENT_VERSION, "UBR")
    return OsVersion(
        text("ProductName"),
        text("CurrentBuild"),
        ubr.as_int() if ubr else None,
        text("EditionID"),
        text("DisplayVersion"),
    )


@dataclass(frozen=True)
class OsUpdateFacts:
    """Everything ``inspect`` reports about OS updates; ``blockers`` say why a hotpatch KB cannot apply here."""

    version: OsVersion
    vbs: VbsState
    enrolment: Enrolment
    reboot: PendingReboot

    @property
    def blockers(self) -> List[str]:
        found: List[str] = []
        if self.vbs.state != "running":
            found.append(f"VBS is not running ({self.vbs.state or 'unknown'}): enable it and reboot")
        if self.enrolment.state != "enrolled":
            found.append("not enrolled in hotpatch (no Hotpatch targeting package, AllowRebootlessUpdates unset)")
        if self.enrolment.arch == "arm64" and not self.enrolment.chpe_disabled:
            found.append("Arm64 with CHPE in use: set HotPatchRestrictions=1 and reboot")
        if self.reboot.pending:
            found.append("a reboot is pending: " + ", ".join(self.reboot.reasons))
        return found

    def as_dict(self) -> Dict[str, Any]:
        v = self.version
        return {
            "product_name": v.product_name,
            "current_build": v.current_build,
            "ubr": v.ubr,
            "edition_id": v.edition_id,
            "display_version": v.display_version,
            "os_build": v.build,
            "vbs": self.vbs.state,
            "vbs_status": self.vbs.status,
            "vbs_source": self.vbs.source,
            "vbs_error": self.vbs.error,
            "enrolment": self.enrolment.state,
            "hotpatch_enrolment": self.enrolment.as_dict(),
            "pending_reboot": self.reboot.pending,
            "pending_reboot_reasons": list(self.reboot.reasons),
            "pending_reboot_optional": list(self.reboot.optional),
            "hotpatch_ready": not self.blockers,
            "hotpatch_blockers": self.blockers,
        }


def osupdate_facts(registry: Registry, runner: Runner, arch: str) -> OsUpdateFacts:
    """Read every OS-update fact through ``registry`` and ``runner`` (tests pass strict fakes)."""
    return OsUpdateFacts(
        os_version(registry), read_vbs(runner, registry), read_enrolment(registry, arch), pending_reboot(registry)
    )


def windows_facts() -> Dict[str, Any]:
    """The facts of this Windows host with the real registry and tools (what ``inspect`` calls on Windows).

    Never raises: when the registry refuses a read, the only key is ``osupdate_error`` saying why. Off Windows
    (the Windows backend driven by a test double) there is nothing to read: {}.
    """
    if os.name != "nt":
        return {}
    from .registry import WinRegistry
    from .runner import SubprocessRunner

    try:
        return osupdate_facts(WinRegistry(), SubprocessRunner(), platform.machine()).as_dict()
    except (EngineError, OSError, ImportError) as exc:
        return {"osupdate_error": f"OS-update facts unavailable: {exc}"}
