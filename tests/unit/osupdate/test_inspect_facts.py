"""The OS-update facts reach ``inspect`` and ``ansible_facts.hotpatch`` with the documented keys."""

from __future__ import annotations

import pytest

from ansible_collections.rebootless.windows.plugins.action.win_hotpatch_facts import hotpatch_facts
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.host.facts import os_facts
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.osupdate.facts import (
    osupdate_facts,
    windows_facts,
)
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.osupdate.runner import Completed

from .conftest import server_2025
from .fakes import StrictRegistry, StrictRunner
from .test_facts import VBS_ARGV


def test_off_windows_the_os_update_facts_add_nothing() -> None:
    assert windows_facts() == {}
    assert "vbs" not in os_facts("windows") and os_facts("wine")["pending_reboot"] is False


def test_ansible_facts_carry_vbs_enrolment_readiness_and_reboot_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    values, absent, absent_keys = server_2025()
    runner = StrictRunner()
    runner.expect(VBS_ARGV, Completed(VBS_ARGV, 0, '{"VirtualizationBasedSecurityStatus":2}'))
    raw = osupdate_facts(StrictRegistry(values, absent, absent_keys=absent_keys), runner, "AMD64").as_dict()
    facts = hotpatch_facts({"platform": "windows", "engine_version": "0.1.0", "facts": raw}, None)
    assert (facts["os_build"], facts["os_ubr"], facts["os_edition"]) == ("26100", 2894, "ServerDatacenterAzure")
    assert (facts["vbs"], facts["vbs_status"], facts["enrolment"], facts["hotpatch_ready"]) == (
        "running",
        2,
        "enrolled",
        True,
    )
    assert facts["hotpatch_enrolment"]["package_name"] == "Hotpatch Enrollment Package"
    assert facts["pending_reboot"] is False
    assert facts["pending_reboot_reasons"] == facts["pending_reboot_optional"] == facts["hotpatch_blockers"] == []


def test_a_wine_host_reports_the_os_update_facts_as_unknown() -> None:
    facts = hotpatch_facts({"platform": "wine", "facts": os_facts("wine")}, None)
    assert facts["vbs"] is None and facts["enrolment"] is None and facts["hotpatch_ready"] is None
    assert facts["hotpatch_blockers"] == [] and facts["pending_reboot"] is False
