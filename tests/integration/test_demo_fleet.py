"""The demo fleet with real programs: appsvc.exe + appcore.dll (mingw-w64) under Wine on loopback.

A tests-only fleet (its own folder, free ports picked at test time) so a running ``make demo`` fleet is untouched;
both share the Wine prefix, so "no Wine process left" is checked for our own processes, and for the whole
prefix only when no other program uses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pefile
import pytest
import yaml

from demo.build import DemoBuild, build
from demo.fleet import SERVICE_DIR, Fleet, PortTakenError, free_base_port, request
from demo.loadgen import LoadGen, Target
from demo.wine import DEFAULT_PREFIX, WINE_SYSTEM_COMMS, find_programs, prefix_processes, program_tag

pytestmark = [pytest.mark.wine, pytest.mark.integration]


def wait_for(condition: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.02)


def our_processes(root: Path) -> list[int]:
    """Linux PIDs of appsvc.exe processes started for the fleet under root."""
    prefix = f"{root.resolve()}/hosts/"
    return [p.pid for p in find_programs("appsvc.exe") if (program_tag(p.pid) or "").startswith(prefix)]


def assert_prefix_clean_unless_shared() -> None:
    """No process left in the Wine prefix, unless another user program (a running demo, another suite's fleet)
    uses it now: then wineserver and Wine's own programs rightly stay."""

    def settled() -> bool:
        procs = prefix_processes(DEFAULT_PREFIX)
        return not procs or any(comm not in WINE_SYSTEM_COMMS for _pid, comm in procs)

    wait_for(settled, 30.0, f"no process left in {DEFAULT_PREFIX}")


def fleet_port(fleet: Fleet) -> int:
    port = fleet.base_port()
    assert port is not None, "the fleet is down"
    return port


def service_pid(fleet: Fleet, host: str) -> int:
    status = fleet.status(probe=False)
    [svc] = next(h for h in status["hosts"] if h["name"] == host)["services"]
    assert svc["pid"] is not None, f"{host} has no running service: {svc}"
    return int(svc["pid"])


@pytest.fixture(scope="module")
def demo_build() -> DemoBuild:
    return build()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, demo_build: DemoBuild) -> Iterator[Fleet]:
    f = Fleet(tmp_path_factory.mktemp("demo-fleet"))
    try:
        f.up(hosts=3, base_port=free_base_port(3), timeout=60)
        yield f
    finally:
        f.down()
    assert our_processes(f.root) == []
    assert_prefix_clean_unless_shared()


def test_up_starts_every_host_and_each_service_answers(fleet: Fleet) -> None:
    status = fleet.status()
    assert [h["name"] for h in status["hosts"]] == ["demo-host-1", "demo-host-2", "demo-host-3"]
    for i, host in enumerate(status["hosts"]):
        [svc] = host["services"]
        assert (svc["name"], svc["port"], svc["running"], svc["answering"]) == (
            "AppSvc",
            fleet_port(fleet) + i,
            True,
            True,
        )
        assert request(svc["port"], "PING") == "PONG"
    assert [h["appcore_build"] for h in status["hosts"]] == ["v1", "v1", "v1-mismatch"]


def test_each_host_has_its_own_system_drive_and_service_table(fleet: Fleet, demo_build: DemoBuild) -> None:
    for name, variant in (("demo-host-1", "v1"), ("demo-host-3", "v1-mismatch")):
        hdir = fleet.host_dir(name)
        dll = hdir / SERVICE_DIR / "appcore.dll"
        assert dll.read_bytes() == demo_build.appcore_dll(variant).read_bytes()
        assert not dll.is_symlink()
        table = json.loads((hdir / "services.json").read_text())
        assert table["AppSvc"]["image"] == str(hdir / SERVICE_DIR / "appsvc.exe")
        assert table["AppSvc"]["state"] == "running"
        assert table["AppSvc"]["pid"] == service_pid(fleet, name)
        assert Path(f"/proc/{table['AppSvc']['pid']}/comm").read_text().strip() == "appsvc.exe"


def test_inventory_describes_every_host_for_the_local_wine_platform(fleet: Fleet) -> None:
    inv = yaml.safe_load(fleet.inventory_path.read_text())
    hosts = inv["all"]["children"]["demo_fleet"]["hosts"]
    assert sorted(hosts) == ["demo-host-1", "demo-host-2", "demo-host-3"]
    h3 = hosts["demo-host-3"]
    assert h3["ansible_connection"] == "local"
    assert h3["hotpatch_platform"] == "wine"
    assert h3["demo_appcore_build"] == "v1-mismatch"
    assert h3["demo_service_port"] == fleet_port(fleet) + 2
    assert h3["demo_host_dir"] == str(fleet.host_dir("demo-host-3"))
    assert os.path.isabs(h3["ansible_remote_tmp"]) and Path(h3["ansible_remote_tmp"]).is_dir()
    assert os.access(h3["ansible_python_interpreter"], os.X_OK)
    assert os.access(h3["demo_fleet_cli"], os.X_OK)
    assert Path(h3["demo_module_path"]).is_file()
    assert hosts["demo-host-1"]["demo_appcore_build"] == "v1"


def test_fleet_cli_from_the_inventory_drives_this_fleet(fleet: Fleet) -> None:
    cli = yaml.safe_load(fleet.inventory_path.read_text())["all"]["children"]["demo_fleet"]["hosts"]["demo-host-2"][
        "demo_fleet_cli"
    ]
    out = subprocess.run(
        [cli, "request", "demo-host-2", "GET", "1"], capture_output=True, text=True, timeout=30, check=False
    )
    assert (out.returncode, out.stdout.strip()) == (0, "banana")
    status = json.loads(subprocess.run([cli, "status"], capture_output=True, text=True, timeout=30, check=False).stdout)
    assert status["root"] == str(fleet.root)
    # As Ansible's command module runs it: output captured through pipes the relaunched service must not hold.
    old_pid = service_pid(fleet, "demo-host-2")
    out = subprocess.run([cli, "restart", "demo-host-2"], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["pid"] == service_pid(fleet, "demo-host-2") != old_pid
    assert fleet.request("demo-host-2", "PING") == "PONG"


def test_up_again_changes_nothing(fleet: Fleet) -> None:
    files = [fleet.inventory_path, fleet.root / "fleet.json"] + [
        fleet.host_dir(h) / n for h in fleet.hosts() for n in ("services.json", "host.json")
    ]
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    pids = [service_pid(fleet, h) for h in fleet.hosts()]
    fleet.up(hosts=3, base_port=fleet_port(fleet))
    assert [service_pid(fleet, h) for h in fleet.hosts()] == pids
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files} == before


def test_v1_leaks_an_api_key_on_get_5_without_crashing(fleet: Fleet) -> None:
    for host in ("demo-host-1", "demo-host-3"):  # v1 and v1-mismatch behave alike
        pid = service_pid(fleet, host)
        assert fleet.request(host, "VERSION") == "appcore 1.0.0"
        assert fleet.request(host, "GET 1") == "banana"
        assert fleet.request(host, "GET 5").startswith("APIKEY-")
        assert fleet.request(host, "GET 7").startswith("APIKEY-")
        assert fleet.request(host, "GET 8") == "ERR index out of range"
        assert fleet.request(host, "PING") == "PONG"
        assert service_pid(fleet, host) == pid
    assert fleet.request("demo-host-3", "BUILD") != fleet.request("demo-host-1", "BUILD")


def test_restart_loads_a_module_staged_on_disk(fleet: Fleet, demo_build: DemoBuild) -> None:
    """The cold path: rename the loaded v1 aside, place v2, restart the service: new PID, v2 answers."""
    host = "demo-host-2"
    old_pid = service_pid(fleet, host)
    dll = fleet.host_dir(host) / SERVICE_DIR / "appcore.dll"
    os.replace(dll, dll.with_name("appcore.dll.orig"))
    shutil.copy2(demo_build.appcore_dll("v2"), dll)
    assert fleet.request(host, "GET 5").startswith("APIKEY-")  # the running process still has v1

    fleet.restart(host, "AppSvc")

    new_pid = service_pid(fleet, host)
    assert new_pid != old_pid
    assert old_pid not in [p.pid for p in find_programs("appsvc.exe")]
    assert fleet.request(host, "VERSION") == "appcore 1.0.1"
    assert fleet.request(host, "GET 5") == "ERR index out of range"
    assert fleet.request(host, "GET 4") == "elder"


def test_reboot_relaunches_every_process_and_applies_pending_renames(fleet: Fleet, demo_build: DemoBuild) -> None:
    host = "demo-host-1"
    before = fleet.load_host(host)
    old_pid = service_pid(fleet, host)
    hdir = fleet.host_dir(host)
    staged = hdir / SERVICE_DIR / "appcore.dll.new"
    shutil.copy2(demo_build.appcore_dll("v2"), staged)
    (hdir / "PendingFileRenameOperations.json").write_text(
        json.dumps(
            [{"from": str(staged.relative_to(hdir)), "to": str((hdir / SERVICE_DIR / "appcore.dll").relative_to(hdir))}]
        )
    )

    after = fleet.reboot(host)

    assert after.boots == before.boots + 1
    assert after.boot_time > before.boot_time
    assert service_pid(fleet, host) != old_pid
    assert fleet.request(host, "VERSION") == "appcore 1.0.1"
    assert not (hdir / "PendingFileRenameOperations.json").exists()
    assert fleet.status()["hosts"][0]["services"][0]["answering"] is True


def test_v1_mismatch_is_another_base_image_than_v1(demo_build: DemoBuild) -> None:
    def pin(path: Path) -> tuple[int, int, int, str]:
        pe = pefile.PE(str(path))
        try:
            assert pe.FILE_HEADER.PointerToSymbolTable != 0, "COFF symbol table kept for the patch builder"
            assert pe.OPTIONAL_HEADER.CheckSum == pe.generate_checksum()
            return (
                pe.FILE_HEADER.TimeDateStamp,
                pe.OPTIONAL_HEADER.CheckSum,
                pe.OPTIONAL_HEADER.SizeOfImage,
                hashlib.sha256(path.read_bytes()).hexdigest(),
            )
        finally:
            pe.close()

    v1, v2, mismatch = (pin(demo_build.appcore_dll(v)) for v in ("v1", "v2", "v1-mismatch"))
    assert v1[0] != mismatch[0] and v1[1] != mismatch[1] and v1[3] != mismatch[3]
    assert v1[0] != v2[0] and v1[3] != v2[3]


def test_hotpatchable_functions_have_cc_padding_and_an_8_byte_first_instruction(demo_build: DemoBuild) -> None:
    pe = pefile.PE(str(demo_build.appcore_dll("v1")))
    try:
        exports = {e.name.decode(): e.address for e in pe.DIRECTORY_ENTRY_EXPORT.symbols if e.name}
        image = pe.get_memory_mapped_image()
    finally:
        pe.close()
    for name in ("appcore_handle", "appcore_version", "appcore_get_item"):
        rva = exports[name]
        assert image[rva - 32 : rva] == b"\xcc" * 32, name
        assert image[rva : rva + 8] == bytes.fromhex("488da42400000000"), name  # lea rsp, [rsp+0]


def test_v1_to_v2_changes_only_the_code_of_two_functions(demo_build: DemoBuild) -> None:
    """What makes v1 -> v2 a hotpatch: same data and layout, code differs in appcore_get_item/appcore_version."""

    def layout(path: Path) -> tuple[dict[str, tuple[int, bytes]], dict[int, str], list[tuple[int, int]]]:
        pe = pefile.PE(str(path))
        try:
            secs = {s.Name.rstrip(b"\0").decode(): (s.VirtualAddress, s.get_data()) for s in pe.sections}
            names = {e.address: e.name.decode() for e in pe.DIRECTORY_ENTRY_EXPORT.symbols if e.name}
            ranges = [(f.struct.BeginAddress, f.struct.EndAddress) for f in pe.DIRECTORY_ENTRY_EXCEPTION]
        finally:
            pe.close()
        return secs, names, ranges

    (v1, names, ranges), (v2, _names, _ranges) = (layout(demo_build.appcore_dll(v)) for v in ("v1", "v2"))
    assert sorted(v1) == sorted(v2)
    assert {n: v1[n] for n in v1 if n != ".text"} == {n: v2[n] for n in v2 if n != ".text"}
    text_rva, text1 = v1[".text"]
    changed = [text_rva + i for i, (a, b) in enumerate(zip(text1, v2[".text"][1], strict=True)) if a != b]
    # .pdata function ranges name each changed byte's function (functions without .pdata show as None).
    owners = {next((names.get(b, hex(b)) for b, e in ranges if b <= rva < e), None) for rva in changed}
    assert changed and owners == {"appcore_get_item", "appcore_version"}


def test_build_is_cached_and_deterministic(demo_build: DemoBuild, tmp_path: Path) -> None:
    assert build().root == demo_build.root
    again = build(cache_dir=tmp_path)
    assert again.key == demo_build.key
    for variant in ("v1", "v2", "v1-mismatch"):
        assert again.appcore_dll(variant).read_bytes() == demo_build.appcore_dll(variant).read_bytes()
    assert again.appsvc_exe.read_bytes() == demo_build.appsvc_exe.read_bytes()


def test_loadgen_counts_no_failure_against_a_healthy_fleet(fleet: Fleet) -> None:
    targets = [Target(h, "127.0.0.1", fleet.load_host(h).port) for h in fleet.hosts()]
    result = LoadGen(targets, rate=40.0, timeout=1.0).run(2.0)
    assert result.failed == 0
    for t in result.targets.values():
        assert t.sent >= 40 and t.answered == t.sent
        assert t.p50_ms is not None and t.p99_ms is not None and t.p50_ms <= t.p99_ms
        assert sum(p.sent for p in t.series) == t.sent


def test_loadgen_counts_failures_while_a_service_is_down(fleet: Fleet) -> None:
    targets = [Target(h, "127.0.0.1", fleet.load_host(h).port) for h in fleet.hosts()]
    gen = LoadGen(targets, rate=50.0, timeout=1.0).start()
    try:
        wait_for(lambda: gen.live_counts().get("demo-host-3", (0, 0))[0] >= 10, what="traffic flowing")
        fleet.stop("demo-host-3")
        wait_for(lambda: gen.live_counts()["demo-host-3"][1] >= 10, what="failures counted on the stopped host")
        fleet.start("demo-host-3")
        sent_at_start = gen.live_counts()["demo-host-3"][0]
        wait_for(lambda: gen.live_counts()["demo-host-3"][0] >= sent_at_start + 60, what="traffic after the restart")
    finally:
        result = gen.stop()
    h3 = result.targets["demo-host-3"]
    assert h3.failed >= 10
    assert h3.failures.get("refused", 0) >= 1
    assert "wrong_answer" not in h3.failures
    assert h3.answered + h3.failed == h3.sent
    assert any(p.failed for p in h3.series)
    assert h3.series[-1].failed == 0  # answering again at the end
    assert result.targets["demo-host-1"].failed == 0
    assert result.targets["demo-host-2"].failed == 0


def test_down_stops_every_process_of_the_fleet(tmp_path: Path) -> None:
    f = Fleet(tmp_path / "fleet")
    try:
        status: dict[str, Any] = f.up(hosts=2, base_port=0, mismatch_host=0)  # 0: free ports picked by the fleet
        down_port = fleet_port(f)
        assert [h["services"][0]["port"] for h in status["hosts"]] == [down_port, down_port + 1]
        pids = [h["services"][0]["pid"] for h in status["hosts"]]
        assert len(our_processes(f.root)) == 2
    finally:
        stopped = f.down()
    assert sorted(stopped) == sorted(pids)
    assert our_processes(f.root) == []
    assert not (f.root / "hosts").exists() and not f.inventory_path.exists()
    for port in (down_port, down_port + 1):
        with pytest.raises(OSError):
            request(port, "PING", timeout=1.0)
    assert_prefix_clean_unless_shared()


def test_up_after_a_port_clash_comes_up_on_free_ports(tmp_path: Path) -> None:
    f = Fleet(tmp_path / "fleet")
    clash = free_base_port(2)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", clash + 1))  # host 1 starts, host 2 clashes
        taken.listen()
        with pytest.raises(PortTakenError):
            f.up(hosts=2, base_port=clash, mismatch_host=0)
        assert our_processes(f.root) == [], "a failed up must stop what it started"
        try:
            status = f.up(hosts=2, base_port=0, mismatch_host=0)
            base = fleet_port(f)
            assert base != clash
            assert [h["services"][0]["port"] for h in status["hosts"]] == [base, base + 1]
            assert all(h["services"][0]["answering"] for h in status["hosts"])
        finally:
            f.down()
    assert our_processes(f.root) == []
