"""The demo fleet: N simulated Windows hosts, each running the AppSvc service (appsvc.exe + appcore.dll) under
Wine on its own loopback port. CLI and importable API (class Fleet).

A host is a folder ``<root>/hosts/<name>/`` acting as its system drive::

    Program Files/AppSvc/appsvc.exe, appcore.dll   the service image and the module hotpatches target
    services.json        service table: name -> image, args, port, start type, state, Linux PID, start ticks
    host.json            name, port, appcore build (v1 / v1-mismatch / ...), boot time, boot count
    PendingFileRenameOperations.json   optional: [{"from": path, "to": path or null}, ...] applied at reboot
                         (paths relative to the host folder), like Windows' key of the same name
    tmp/ansible          the host's ansible_remote_tmp

``<root>/fleet.json`` records the fleet (hosts, base port, Wine prefix), ``<root>/inventory.yml`` is the Ansible
inventory (group ``demo_fleet``) and ``<root>/fleetctl`` a command running this CLI on this fleet, for roles
that restart services or reboot hosts. Logs: ``<root>/logs/<host>/<service>.log`` (kept by ``down``).

CLI::

    fleet.py [--root DIR] up [--hosts N] [--base-port P|0] [--mismatch-host K] [--timeout S]
    fleet.py [--root DIR] status | restart HOST [SERVICE] | stop HOST [SERVICE] | start HOST [SERVICE]
    fleet.py [--root DIR] reboot HOST | down [--keep] | request HOST LINE
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import random
import shlex
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml

from demo.build import build as build_demo
from demo.wine import (
    DEFAULT_PREFIX,
    WineProcess,
    find_programs,
    is_running,
    program_tag,
    shutdown_prefix_if_idle,
    start_program,
    stop_program,
)

__all__ = [
    "DEFAULT_BASE_PORT",
    "DEFAULT_ROOT",
    "SERVICE_NAME",
    "Fleet",
    "FleetError",
    "HostRecord",
    "PortTakenError",
    "ServiceRecord",
    "free_base_port",
    "request",
]

DEMO_DIR = Path(__file__).resolve().parent
REPO_ROOT = DEMO_DIR.parent
DEFAULT_ROOT = DEMO_DIR / "run"
DEFAULT_BASE_PORT = 18080
SERVICE_NAME = "AppSvc"
SERVICE_DIR = Path("Program Files") / "AppSvc"
GROUP = "demo_fleet"


class FleetError(RuntimeError):
    """A fleet operation failed; the message says which host/service and what to do."""


class PortTakenError(FleetError):
    """A host's port already answers (another fleet, another checkout's demo, any other program).

    port is the loopback TCP port that answered; the message says how to pick other ports."""

    def __init__(self, message: str, port: int) -> None:
        super().__init__(message)
        self.port = port


@dataclass
class ServiceRecord:
    """One row of a host's service table (services.json). Paths absolute; pid/start_ticks of the Linux process."""

    name: str
    image: str
    args: list[str]
    port: int
    start: str = "auto"
    state: str = "stopped"
    pid: int | None = None
    start_ticks: int | None = None
    started_at: float | None = None

    def process(self) -> WineProcess | None:
        if self.pid is None or self.start_ticks is None:
            return None
        return WineProcess(self.pid, self.start_ticks)


@dataclass
class HostRecord:
    """A simulated host (host.json): boot_time in seconds since the epoch, boots counts starts from power-on."""

    name: str
    index: int
    dir: str
    port: int
    appcore_build: str
    boot_time: float
    boots: int = 1
    services: dict[str, ServiceRecord] = field(default_factory=dict)


def request(port: int, line: str, timeout: float = 2.0, host: str = "127.0.0.1") -> str:
    """Send one request line to a service and return its answer line (without newline).

    Raises OSError (refused, reset, timeout) or FleetError when the connection closes without an answer.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(line.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                raise FleetError(f"127.0.0.1:{port} closed the connection without answering {line!r}")
            data += chunk
    return data.decode(errors="replace").rstrip("\r\n")


def _answers_ping(port: int, timeout: float = 1.0) -> bool:
    try:
        return request(port, "PING", timeout) == "PONG"
    except (OSError, FleetError):
        return False


def _port_in_use(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def free_base_port(count: int, low: int = 20000, high: int = 32000) -> int:
    """First of ``count`` consecutive loopback TCP ports that nothing listens on or holds, from [low, high).

    The range stays below Linux's ephemeral ports (32768+), so an outgoing connection cannot take one between
    this check and the service's bind. Starts at a random port so parallel callers rarely pick the same block.
    Raises FleetError when no free block was found in 200 tries.
    """
    rng = random.Random()
    for _attempt in range(200):
        base = rng.randrange(low, high - count + 1)
        if all(_bindable(port) for port in range(base, base + count)):
            return base
    raise FleetError(f"no {count} consecutive free TCP ports in {low}..{high}: stop other fleets or pass --base-port")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return not _port_in_use(port)


def _write_if_changed(path: Path, text: str) -> None:
    """Atomic write that leaves the file (and its mtime) alone when the content is the same."""
    if path.is_file() and path.read_text() == text:
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _venv_python() -> str:
    venv = REPO_ROOT / ".venv" / "bin" / "python"
    return str(venv if venv.exists() else Path(sys.executable))


class Fleet:
    """The fleet under root (default demo/run): up, status, restart, reboot, down, request.

    Every wait is bounded; errors raise FleetError. Host-level operations lock ``<root>/.<host>.lock`` so
    parallel Ansible forks restarting different hosts never step on each other.
    """

    def __init__(self, root: Path = DEFAULT_ROOT, prefix: Path = DEFAULT_PREFIX) -> None:
        self.root = root.resolve()
        self.prefix = prefix

    # -- paths and records -------------------------------------------------------------------------------------
    @property
    def inventory_path(self) -> Path:
        return self.root / "inventory.yml"

    @property
    def cli_path(self) -> Path:
        return self.root / "fleetctl"

    def host_dir(self, host: str) -> Path:
        return self.root / "hosts" / host

    def _log(self, host: str, service: str) -> Path:
        return self.root / "logs" / host / f"{service}.log"

    def _tag(self, host: str, service: str) -> str:
        return f"{self.host_dir(host)}|{service}"

    def _fleet_meta(self) -> dict[str, Any]:
        path = self.root / "fleet.json"
        if not path.is_file():
            return {}
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    def base_port(self) -> int | None:
        """Port of demo-host-1's service (host K listens on base + K - 1); None when the fleet is down."""
        port = self._fleet_meta().get("base_port")
        return int(port) if port is not None else None

    def hosts(self) -> list[str]:
        """Host names of the fleet, in order (empty when the fleet is down)."""
        return list(self._fleet_meta().get("hosts", []))

    def load_host(self, host: str) -> HostRecord:
        """Read host.json and services.json; raises FleetError for an unknown host."""
        hdir = self.host_dir(host)
        if not (hdir / "host.json").is_file():
            raise FleetError(f"no host {host!r} in fleet {self.root}; known: {self.hosts() or 'none (run up)'}")
        data = json.loads((hdir / "host.json").read_text())
        services = json.loads((hdir / "services.json").read_text())
        record = HostRecord(**data)
        record.services = {name: ServiceRecord(**svc) for name, svc in services.items()}
        return record

    def _save_host(self, record: HostRecord) -> None:
        hdir = Path(record.dir)
        meta = asdict(record)
        services = meta.pop("services")
        _write_if_changed(hdir / "host.json", json.dumps(meta, indent=2) + "\n")
        _write_if_changed(hdir / "services.json", json.dumps(services, indent=2) + "\n")

    @contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        lock_path = self.root / f".{name}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    # -- services ----------------------------------------------------------------------------------------------
    def _find_service_process(self, host: str, svc: ServiceRecord) -> WineProcess | None:
        proc = svc.process()
        if proc is not None and is_running(proc):
            return proc
        found = find_programs(Path(svc.image).name, self._tag(host, svc.name))
        return found[0] if found else None

    def _start_service(self, record: HostRecord, svc: ServiceRecord, timeout: float) -> None:
        if _port_in_use(svc.port):
            raise PortTakenError(
                f"{record.name}/{svc.name}: port {svc.port} already answers, another program (another fleet?) "
                "holds it; stop it (`demo/fleet.py down` in the other checkout) or pass `--base-port 0` for free ports",
                svc.port,
            )
        proc = start_program(
            Path(svc.image),
            svc.args,
            prefix=self.prefix,
            log=self._log(record.name, svc.name),
            tag=self._tag(record.name, svc.name),
            cwd=Path(svc.image).parent,
            timeout=timeout,
        )
        svc.pid, svc.start_ticks, svc.started_at, svc.state = proc.pid, proc.start_ticks, time.time(), "running"

    def _stop_service(self, host: str, svc: ServiceRecord) -> None:
        proc = self._find_service_process(host, svc)
        if proc is not None:
            stop_program(proc)
        for stray in find_programs(Path(svc.image).name, self._tag(host, svc.name)):
            stop_program(stray)
        svc.pid, svc.start_ticks, svc.state = None, None, "stopped"

    def _wait_answering(self, pending: list[tuple[str, ServiceRecord]], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        waiting = list(pending)
        while waiting:
            waiting = [(h, s) for h, s in waiting if not _answers_ping(s.port, timeout=1.0)]
            if not waiting:
                return
            for host, svc in waiting:
                proc = svc.process()
                if proc is not None and not is_running(proc):
                    raise FleetError(
                        f"{host}/{svc.name} exited before answering on port {svc.port}; see {self._log(host, svc.name)}"
                    )
            if time.monotonic() > deadline:
                names = ", ".join(f"{h}/{s.name}:{s.port}" for h, s in waiting)
                raise FleetError(
                    f"no PONG within {timeout:.0f} s from {names}; see the logs under {self.root / 'logs'}"
                )
            time.sleep(0.05)

    # -- provisioning ------------------------------------------------------------------------------------------
    def _provision(self, name: str, index: int, port: int, build_variant: str) -> HostRecord:
        built = build_demo()
        hdir = self.host_dir(name)
        sdir = hdir / SERVICE_DIR
        sdir.mkdir(parents=True, exist_ok=True)
        (hdir / "tmp" / "ansible").mkdir(parents=True, exist_ok=True)
        # Copies, not links: each host's files change on their own (cold path, renamed-aside originals).
        shutil.copy2(built.appsvc_exe, sdir / "appsvc.exe")
        shutil.copy2(built.appcore_dll(build_variant), sdir / "appcore.dll")
        svc = ServiceRecord(name=SERVICE_NAME, image=str(sdir / "appsvc.exe"), args=[str(port)], port=port)
        record = HostRecord(
            name=name,
            index=index,
            dir=str(hdir),
            port=port,
            appcore_build=build_variant,
            boot_time=time.time(),
            services={SERVICE_NAME: svc},
        )
        self._save_host(record)
        return record

    def up(
        self,
        hosts: int = 4,
        base_port: int = DEFAULT_BASE_PORT,
        mismatch_host: int = 3,
        timeout: float = 60.0,
        builds: dict[int, str] | None = None,
    ) -> dict[str, Any]:
        """Bring hosts demo-host-1..N up and wait (bounded by timeout seconds) until every service answers PING.

        Host K gets appcore v1, except host mismatch_host (0: none) which gets v1-mismatch; builds maps a host
        number to another variant ("v2", ...) for tests. Idempotent: a running service is left alone; a
        stopped one starts with the files on its host. Returns status(). Raises FleetError when the running
        fleet has another size or base port (run down first), a port is taken, or a service does not answer.
        base_port 0: the running fleet's base port, or free_base_port(hosts) for a new fleet.
        """
        if hosts < 1:
            raise FleetError("--hosts must be at least 1")
        with self._locked("fleet"):
            meta = self._fleet_meta()
            if base_port == 0:
                base_port = int(meta["base_port"]) if meta else free_base_port(hosts)
            names = [f"demo-host-{i}" for i in range(1, hosts + 1)]
            if meta and (meta.get("hosts") != names or meta.get("base_port") != base_port):
                raise FleetError(
                    f"fleet {self.root} is up with {len(meta.get('hosts', []))} hosts from port "
                    f"{meta.get('base_port')}; run `fleet.py down` before changing its size or ports"
                )
            started: list[tuple[str, ServiceRecord]] = []
            launched: list[HostRecord] = []
            try:
                for i, name in enumerate(names, start=1):
                    with self._locked(name):
                        if (self.host_dir(name) / "host.json").is_file():
                            record = self.load_host(name)
                            self._repoint_if_stopped(record, base_port + i - 1)
                        else:
                            variant = (builds or {}).get(i) or ("v1-mismatch" if i == mismatch_host else "v1")
                            record = self._provision(name, i, base_port + i - 1, variant)
                        for svc in record.services.values():
                            proc = self._find_service_process(name, svc)
                            if proc is not None:
                                if (svc.pid, svc.start_ticks, svc.state) != (proc.pid, proc.start_ticks, "running"):
                                    svc.pid, svc.start_ticks, svc.state = proc.pid, proc.start_ticks, "running"
                                started.append((name, svc))
                            elif svc.start == "auto":
                                self._start_service(record, svc, timeout)
                                started.append((name, svc))
                                launched.append(record)
                        self._save_host(record)
            except FleetError:
                # A new fleet that failed half-way (port clash) stops what this call started, so no running
                # service pins a port and a retry with other ports (--base-port 0) starts from clean records.
                if not meta:
                    for record in launched:
                        for svc in record.services.values():
                            self._stop_service(record.name, svc)
                        self._save_host(record)
                raise
            new_meta = {
                "hosts": names,
                "base_port": base_port,
                "mismatch_host": mismatch_host,
                "prefix": str(self.prefix),
            }
            if meta != new_meta:
                _write_if_changed(self.root / "fleet.json", json.dumps(new_meta, indent=2) + "\n")
            self._write_cli()
            self._write_inventory()
            self._wait_answering(started, timeout)
        return self.status()

    def _repoint_if_stopped(self, record: HostRecord, port: int) -> None:
        """Move a host whose service is not running to port (a failed up, e.g. a port clash, leaves host
        records behind without fleet.json: they must not pin the old port when the caller asks for others).
        A running service keeps its port: up() refuses other ports for a running fleet before this."""
        if record.port == port:
            return
        if any(self._find_service_process(record.name, svc) is not None for svc in record.services.values()):
            return
        for svc in record.services.values():
            if svc.port == record.port:
                svc.args = [str(port) if arg == str(svc.port) else arg for arg in svc.args]
                svc.port = port
        record.port = port
        self._save_host(record)

    def _write_cli(self) -> None:
        script = (
            "#!/bin/sh\n# Runs demo/fleet.py on this fleet (written by `fleet.py up`).\n"
            f"exec {shlex.quote(_venv_python())} {shlex.quote(str(DEMO_DIR / 'fleet.py'))} "
            f'--root {shlex.quote(str(self.root))} "$@"\n'
        )
        _write_if_changed(self.cli_path, script)
        self.cli_path.chmod(0o755)

    def inventory(self) -> dict[str, Any]:
        """The Ansible inventory as a dict: group demo_fleet, one entry per host with its variables."""
        hosts: dict[str, Any] = {}
        for name in self.hosts():
            record = self.load_host(name)
            svc = record.services[SERVICE_NAME]
            hosts[name] = {
                "ansible_connection": "local",
                "ansible_python_interpreter": _venv_python(),
                "ansible_remote_tmp": str(Path(record.dir) / "tmp" / "ansible"),
                "hotpatch_platform": "wine",
                "demo_host_dir": record.dir,
                "demo_service_name": svc.name,
                "demo_service_port": svc.port,
                "demo_service_image": svc.image,
                "demo_module_path": str(Path(svc.image).parent / "appcore.dll"),
                "demo_appcore_build": record.appcore_build,
                "demo_fleet_cli": str(self.cli_path),
                "demo_wine_prefix": str(self.prefix),
            }
        return {"all": {"children": {GROUP: {"hosts": hosts}}}}

    def _write_inventory(self) -> None:
        header = "# Written by demo/fleet.py up; removed by down.\n"
        _write_if_changed(self.inventory_path, header + yaml.safe_dump(self.inventory(), sort_keys=False))

    # -- operations on a running fleet -------------------------------------------------------------------------
    def status(self, probe: bool = True) -> dict[str, Any]:
        """The fleet as JSON-ready data: per host its build, boot time and services (pid, running, answering,
        version when probe is True)."""
        hosts = []
        for name in self.hosts():
            record = self.load_host(name)
            services = []
            for svc in record.services.values():
                proc = self._find_service_process(name, svc)
                answering = probe and proc is not None and _answers_ping(svc.port)
                version = None
                if answering:
                    try:
                        version = request(svc.port, "VERSION", 1.0)
                    except (OSError, FleetError):
                        version = None
                services.append(
                    {
                        "name": svc.name,
                        "port": svc.port,
                        "state": svc.state,
                        "pid": proc.pid if proc else None,
                        "running": proc is not None,
                        "answering": answering,
                        "version": version,
                        "started_at": svc.started_at,
                    }
                )
            hosts.append(
                {
                    "name": name,
                    "dir": record.dir,
                    "appcore_build": record.appcore_build,
                    "boot_time": record.boot_time,
                    "boots": record.boots,
                    "services": services,
                }
            )
        return {"root": str(self.root), "inventory": str(self.inventory_path), "hosts": hosts}

    def restart(self, host: str, service: str = SERVICE_NAME, timeout: float = 30.0) -> ServiceRecord:
        """Stop and relaunch one service (new process, so a module staged on disk is loaded) and wait until it
        answers PING. Raises FleetError for an unknown host/service or when it does not answer in timeout s."""
        with self._locked(host):
            record = self.load_host(host)
            svc = self._service(record, service)
            self._stop_service(host, svc)
            self._save_host(record)
            self._start_service(record, svc, timeout)
            self._save_host(record)
            self._wait_answering([(host, svc)], timeout)
        return svc

    def stop(self, host: str, service: str = SERVICE_NAME) -> ServiceRecord:
        """Stop one service and leave it stopped (state "stopped" until start, restart, reboot or up)."""
        with self._locked(host):
            record = self.load_host(host)
            svc = self._service(record, service)
            self._stop_service(host, svc)
            self._save_host(record)
        return svc

    def start(self, host: str, service: str = SERVICE_NAME, timeout: float = 30.0) -> ServiceRecord:
        """Start one service when it is not running and wait until it answers PING (no-op when running)."""
        with self._locked(host):
            record = self.load_host(host)
            svc = self._service(record, service)
            if self._find_service_process(host, svc) is None:
                self._start_service(record, svc, timeout)
                self._save_host(record)
            self._wait_answering([(host, svc)], timeout)
        return svc

    def _service(self, record: HostRecord, service: str) -> ServiceRecord:
        if service not in record.services:
            raise FleetError(f"{record.name} has no service {service!r}; it has {sorted(record.services)}")
        return record.services[service]

    def reboot(self, host: str, timeout: float = 60.0) -> HostRecord:
        """The simulated reboot: stop every process of the host, apply PendingFileRenameOperations.json, record
        a new boot time, start the auto-start services, wait until they answer."""
        with self._locked(host):
            record = self.load_host(host)
            for svc in record.services.values():
                self._stop_service(host, svc)
            self._save_host(record)
            self._apply_pending_renames(record)
            record.boot_time = time.time()
            record.boots += 1
            started = []
            for svc in record.services.values():
                if svc.start == "auto":
                    self._start_service(record, svc, timeout)
                    started.append((host, svc))
            self._save_host(record)
            self._wait_answering(started, timeout)
        return record

    def _apply_pending_renames(self, record: HostRecord) -> None:
        hdir = Path(record.dir)
        pending = hdir / "PendingFileRenameOperations.json"
        if not pending.is_file():
            return
        for op in json.loads(pending.read_text()):
            src = (hdir / op["from"]).resolve()
            dst = None if op.get("to") is None else (hdir / op["to"]).resolve()
            for path in (src, dst):
                if path is not None and not path.is_relative_to(hdir):
                    raise FleetError(f"{pending}: {path} is outside the host folder; fix or remove the file")
            if dst is None:
                src.unlink(missing_ok=True)
            elif src.exists():
                os.replace(src, dst)
        pending.unlink()

    def request(self, host: str, line: str, service: str = SERVICE_NAME, timeout: float = 2.0) -> str:
        """Send one request line to a host's service and return the answer (see module function request)."""
        return request(self.load_host(host).services[service].port, line, timeout)

    def down(self, keep: bool = False, timeout: float = 15.0) -> list[int]:
        """Stop every service of the fleet (and any stray process tagged with this fleet), then Wine's own
        processes when no other program uses the prefix. Removes host folders, inventory and fleet.json unless
        keep. Returns the Linux PIDs stopped."""
        stopped: list[int] = []
        with self._locked("fleet"):
            hosts_dir = self.root / "hosts"
            names = sorted(p.name for p in hosts_dir.iterdir() if p.is_dir()) if hosts_dir.is_dir() else []
            for name in names:
                with self._locked(name):
                    try:
                        record = self.load_host(name)
                    except (FleetError, OSError, ValueError, TypeError):
                        continue
                    for svc in record.services.values():
                        proc = self._find_service_process(name, svc)
                        if proc is not None:
                            stopped.append(proc.pid)
                        self._stop_service(name, svc)
                    self._save_host(record)
            for proc in find_programs("appsvc.exe"):
                tag = program_tag(proc.pid) or ""
                if tag.startswith(f"{hosts_dir}/") and stop_program(proc):
                    stopped.append(proc.pid)
            shutdown_prefix_if_idle(self.prefix, timeout)
            if not keep:
                shutil.rmtree(hosts_dir, ignore_errors=True)
                for path in (self.root / "fleet.json", self.inventory_path, self.cli_path):
                    path.unlink(missing_ok=True)
        return stopped


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Simulated Windows fleet: AppSvc under Wine on loopback.")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help=f"fleet folder (default {DEFAULT_ROOT})")
    parser.add_argument("--prefix", type=Path, default=DEFAULT_PREFIX, help="WINEPREFIX (created once)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="create/start the hosts, wait until each answers, write the inventory")
    p_up.add_argument("--hosts", type=int, default=4)
    p_up.add_argument(
        "--base-port",
        type=int,
        default=int(os.environ.get("REBOOTLESS_DEMO_BASE_PORT") or DEFAULT_BASE_PORT),
        help=f"host K listens on base+K-1 (default $REBOOTLESS_DEMO_BASE_PORT or {DEFAULT_BASE_PORT}; "
        "0: free ports, or the running fleet's)",
    )
    p_up.add_argument("--mismatch-host", type=int, default=3, help="host number given v1-mismatch (0: none)")
    p_up.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for every PONG")
    sub.add_parser("status", help="JSON: hosts, services, PIDs, answering or not")
    p_restart = sub.add_parser("restart", help="stop and relaunch one service")
    p_restart.add_argument("host")
    p_restart.add_argument("service", nargs="?", default=SERVICE_NAME)
    for verb, text in (("stop", "stop one service (stays stopped)"), ("start", "start a stopped service")):
        p_verb = sub.add_parser(verb, help=text)
        p_verb.add_argument("host")
        p_verb.add_argument("service", nargs="?", default=SERVICE_NAME)
    p_reboot = sub.add_parser("reboot", help="stop and relaunch every process of a host, new boot time")
    p_reboot.add_argument("host")
    p_down = sub.add_parser("down", help="stop everything; remove host folders unless --keep")
    p_down.add_argument("--keep", action="store_true")
    p_req = sub.add_parser("request", help="send one request line, print the answer")
    p_req.add_argument("host")
    p_req.add_argument("line", nargs="+")
    args = parser.parse_args(argv)

    fleet = Fleet(args.root, args.prefix)
    try:
        if args.cmd == "up":
            t0 = time.monotonic()
            status = fleet.up(args.hosts, args.base_port, args.mismatch_host, args.timeout)
            status["up_seconds"] = round(time.monotonic() - t0, 3)
            _print_json(status)
        elif args.cmd == "status":
            _print_json(fleet.status())
        elif args.cmd == "restart":
            _print_json(asdict(fleet.restart(args.host, args.service)))
        elif args.cmd == "stop":
            _print_json(asdict(fleet.stop(args.host, args.service)))
        elif args.cmd == "start":
            _print_json(asdict(fleet.start(args.host, args.service)))
        elif args.cmd == "reboot":
            record = fleet.reboot(args.host)
            _print_json({"name": record.name, "boot_time": record.boot_time, "boots": record.boots})
        elif args.cmd == "down":
            _print_json({"stopped_pids": fleet.down(keep=args.keep)})
        elif args.cmd == "request":
            print(fleet.request(args.host, " ".join(args.line)))
    except (FleetError, OSError) as exc:
        print(f"fleet {args.cmd}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
