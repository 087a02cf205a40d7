"""win_hotpatch and win_hotpatch_facts through ansible-playbook against the demo fleet, with the real engine.

Real everything: appsvc.exe + appcore.dll v1 (mingw-w64) running under Wine, the appcore v1 -> v2 package from
the patch builder, the engine zipapp built from this checkout, Ansible's local connection. Each host gets its
own engine_dir and state_dir and only its own service process (by PID), since every demo host is a process on
this one machine. Tests run in file order and build on each other (apply, re-apply, rollback, ...).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from demo.fleet import Fleet
from demo.main_job import build_demo_package
from tests.support.running_fleet import running_fleet

pytestmark = [pytest.mark.wine, pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_package(tmp_path_factory.mktemp("package")).path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with running_fleet(tmp_path_factory.mktemp("modules-fleet"), hosts=2) as fleet:  # free ports, never a demo's
        yield fleet


class Run:
    """One ansible-playbook run of a single task on one host: ``result`` (registered), ``stdout``, ``puts``."""

    def __init__(self, result: dict[str, Any], stdout: str) -> None:
        self.result, self.stdout = result, stdout
        # The local connection logs every transfer at -vvv as "<host> PUT <src> TO <dest>".
        # Only the module under test's transfers, not those of the task that keeps its result.
        ours = stdout.split("TASK [keep the result]")[0]
        self.puts = [m.group(1) for m in re.finditer(r"^<[^>]+> PUT .+ TO (.+)$", ours, re.MULTILINE)]


def service_pid(fleet: Fleet, host: str) -> int:
    for entry in fleet.status(probe=False)["hosts"]:
        if entry["name"] == host:
            return int(entry["services"][0]["pid"])
    raise AssertionError(f"no host {host}")


def host_dir(fleet: Fleet, host: str) -> Path:
    return Path(fleet.host_dir(host))


def run(
    fleet: Fleet, host: str, module: str, args: dict[str, Any], tmp_path: Path, check: bool = False, diff: bool = False
) -> Run:
    """Run ``module`` with ``args`` (plus this host's engine_dir, state_dir) on ``host`` through ansible-playbook."""
    dump = tmp_path / "result.json"
    base = {"engine_dir": "{{ demo_host_dir }}/rebootless", "state_dir": "{{ demo_host_dir }}/rebootless/state"}
    task: dict[str, Any] = {
        "name": "module under test",
        module: base | args,
        "register": "outcome",
        "ignore_errors": True,
        "diff": diff,
    }
    keep: dict[str, Any] = {
        "name": "keep the result",
        "ansible.builtin.copy": {"content": "{{ outcome | to_json }}", "dest": str(dump)},
        "check_mode": False,
    }
    playbook = tmp_path / "play.yml"
    playbook.write_text(yaml.safe_dump([{"hosts": host, "gather_facts": False, "tasks": [task, keep]}]))
    command = [str(PLAYBOOK), "-vvv", "-i", str(fleet.inventory_path), str(playbook)] + (["--check"] if check else [])
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=f"{ROOT / '.collections'}:{ROOT / '.cache' / 'collections'}",
        ANSIBLE_LOCAL_TEMP=str(tmp_path / "local"),
        ANSIBLE_NOCOLOR="1",
        WINEDEBUG="-all",
        WINEDLLOVERRIDES="mscoree,mshtml=",
    )
    env.pop("DISPLAY", None)
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    return Run(json.loads(dump.read_text()), done.stdout)


def apply_args(package: Path, fleet: Fleet, host: str, **extra: Any) -> dict[str, Any]:
    return {
        "package": str(package),
        "allow_unsigned": True,
        "processes": {"pids": [service_pid(fleet, host)]},
    } | extra


def test_facts_report_the_platform_and_the_processes_loading_appcore(fleet: Fleet, tmp_path: Path) -> None:
    done = run(fleet, "demo-host-1", "rebootless.windows.win_hotpatch_facts", {"module": "appcore.dll"}, tmp_path)
    facts = done.result["ansible_facts"]["hotpatch"]
    assert facts["platform"] == "wine"
    assert facts["engine_version"]
    assert facts["vbs"] is None  # no VBS on Wine: a documented null
    assert facts["pending_reboot"] is False and facts["pending_reboot_reasons"] == []
    mine = [p for p in facts["processes"] if p["pid"] == service_pid(fleet, "demo-host-1")]
    assert mine and mine[0]["module_path"].endswith("appcore.dll")
    assert not (host_dir(fleet, "demo-host-1") / "rebootless").exists()  # read-only run: no engine_dir made


def test_check_mode_plans_with_a_diff_and_changes_nothing(fleet: Fleet, package: Path, tmp_path: Path) -> None:
    done = run(
        fleet,
        "demo-host-1",
        "rebootless.windows.win_hotpatch",
        apply_args(package, fleet, "demo-host-1"),
        tmp_path,
        check=True,
        diff=True,
    )
    assert done.result["changed"] is True, done.result
    assert [p["result"] for p in done.result["processes"]] == ["would_patch"]
    pid = service_pid(fleet, "demo-host-1")
    assert done.result["diff"] == {
        "before": f"appsvc.exe (pid {pid}): base\n",
        "after": f"appsvc.exe (pid {pid}): patched\n",
    }
    assert fleet.request("demo-host-1", "VERSION") == "appcore 1.0.0"
    assert not (host_dir(fleet, "demo-host-1") / "rebootless").exists()


def test_apply_patches_the_running_service_without_a_restart(fleet: Fleet, package: Path, tmp_path: Path) -> None:
    pid = service_pid(fleet, "demo-host-1")
    done = run(
        fleet,
        "demo-host-1",
        "rebootless.windows.win_hotpatch",
        apply_args(package, fleet, "demo-host-1"),
        tmp_path,
        diff=True,
    )

    assert done.result["changed"] is True and not done.result.get("failed"), done.result
    (proc,) = done.result["processes"]
    assert (proc["pid"], proc["result"], proc["code_before"], proc["code_after"]) == (pid, "patched", "base", "patched")
    assert proc["pause_us"] > 0
    assert done.result["package"]["id"] == "appcore-cve-fix"
    assert done.result["package"]["sha256"] == hashlib.sha256(package.read_bytes()).hexdigest()
    assert fleet.request("demo-host-1", "VERSION") == "appcore 1.0.1"
    assert service_pid(fleet, "demo-host-1") == pid
    names = [Path(p).name for p in done.puts]
    assert names[1:] == [f"{done.result['package']['sha256']}.hpk", "request.json"]
    assert names[0].startswith("engine-") and names[0].endswith(".pyz")


def test_reapply_is_unchanged_and_transfers_only_the_request(fleet: Fleet, package: Path, tmp_path: Path) -> None:
    done = run(
        fleet, "demo-host-1", "rebootless.windows.win_hotpatch", apply_args(package, fleet, "demo-host-1"), tmp_path
    )
    assert done.result["changed"] is False, done.result
    assert [p["result"] for p in done.result["processes"]] == ["already_patched"]
    assert [Path(p).name for p in done.puts] == ["request.json"]


def test_rollback_restores_the_base_code(fleet: Fleet, package: Path, tmp_path: Path) -> None:
    args = apply_args(package, fleet, "demo-host-1", state="absent")
    done = run(fleet, "demo-host-1", "rebootless.windows.win_hotpatch", args, tmp_path, diff=True)
    assert done.result["changed"] is True, done.result
    assert [p["result"] for p in done.result["processes"]] == ["rolled_back"]
    assert fleet.request("demo-host-1", "VERSION") == "appcore 1.0.0"


def test_staged_puts_the_patched_module_on_disk_and_unstaged_restores_it(
    fleet: Fleet, package: Path, tmp_path: Path
) -> None:
    inventory = yaml.safe_load(fleet.inventory_path.read_text())
    module_path = Path(inventory["all"]["children"]["demo_fleet"]["hosts"]["demo-host-2"]["demo_module_path"])
    original = hashlib.sha256(module_path.read_bytes()).hexdigest()
    args = apply_args(package, fleet, "demo-host-2", state="staged", module_path=str(module_path))

    planned = run(fleet, "demo-host-2", "rebootless.windows.win_hotpatch", args, tmp_path, check=True)
    assert planned.result["changed"] is True and hashlib.sha256(module_path.read_bytes()).hexdigest() == original

    staged = run(fleet, "demo-host-2", "rebootless.windows.win_hotpatch", args, tmp_path)
    assert staged.result["changed"] is True, staged.result
    assert hashlib.sha256(module_path.read_bytes()).hexdigest() != original
    assert staged.result["staged"][0]["sha256_before"] == original

    again = run(fleet, "demo-host-2", "rebootless.windows.win_hotpatch", args, tmp_path)
    assert again.result["changed"] is False, again.result

    unstaged = run(fleet, "demo-host-2", "rebootless.windows.win_hotpatch", args | {"state": "unstaged"}, tmp_path)
    assert unstaged.result["changed"] is True, unstaged.result
    assert hashlib.sha256(module_path.read_bytes()).hexdigest() == original


def test_bad_arguments_fail_clearly_and_touch_nothing(fleet: Fleet, package: Path, tmp_path: Path) -> None:
    args = apply_args(package, fleet, "demo-host-2", state="sideways")
    done = run(fleet, "demo-host-2", "rebootless.windows.win_hotpatch", args, tmp_path)
    assert done.result["failed"] is True
    assert "state" in done.result["msg"] and "sideways" in done.result["msg"]
    assert done.puts == []


def test_tampered_package_is_rejected_on_the_controller_and_nothing_is_sent(
    fleet: Fleet, package: Path, tmp_path: Path
) -> None:
    raw = bytearray(package.read_bytes())
    raw[len(raw) // 3] ^= 0x01
    tampered = tmp_path / "tampered.hpk"
    tampered.write_bytes(bytes(raw))
    done = run(
        fleet, "demo-host-2", "rebootless.windows.win_hotpatch", apply_args(tampered, fleet, "demo-host-2"), tmp_path
    )
    assert done.result["failed"] is True
    assert "rejected on the controller" in done.result["msg"], done.result["msg"]
    assert done.puts == []
    assert fleet.request("demo-host-2", "VERSION") == "appcore 1.0.0"


def test_signed_package_applies_with_its_trusted_key_and_no_allow_unsigned(
    fleet: Fleet, package: Path, tmp_path: Path
) -> None:
    from ansible_collections.rebootless.windows.tests.unit.plugins.action_harness import sign

    signed = tmp_path / "signed.hpk"
    signed.write_bytes(package.read_bytes())
    trusted = sign(signed)
    args = {
        "package": str(signed),
        "trusted_keys": [trusted],
        "processes": {"pids": [service_pid(fleet, "demo-host-2")]},
    }
    done = run(fleet, "demo-host-2", "rebootless.windows.win_hotpatch", args, tmp_path)
    assert done.result["changed"] is True and not done.result.get("failed"), done.result
    assert fleet.request("demo-host-2", "VERSION") == "appcore 1.0.1"

    undone = run(fleet, "demo-host-2", "rebootless.windows.win_hotpatch", args | {"state": "absent"}, tmp_path)
    assert undone.result["changed"] is True, undone.result
    assert fleet.request("demo-host-2", "VERSION") == "appcore 1.0.0"


def test_engine_refusal_of_an_unsigned_remote_package_fails_with_the_engine_message(
    fleet: Fleet, package: Path, tmp_path: Path
) -> None:
    # remote_src: the controller cannot check it, so this is the engine's own refusal (exit code 4).
    args = {"package": str(package), "remote_src": True, "processes": {"pids": [service_pid(fleet, "demo-host-2")]}}
    done = run(fleet, "demo-host-2", "rebootless.windows.win_hotpatch", args, tmp_path)
    assert done.result["failed"] is True
    assert done.result["engine_rc"] == 4
    assert done.result["msg"].startswith("apply failed (signature, exit 4): package is unsigned"), done.result["msg"]
    assert fleet.request("demo-host-2", "VERSION") == "appcore 1.0.0"
