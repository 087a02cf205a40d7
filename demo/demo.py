"""What ``make demo`` runs: build the AppSvc service, bring up the simulated fleet, show it serving (and leaking
on ``GET 5``), put load on it, then run the main job (the hotpatch rollout) with the load running.

Usage: ``.venv/bin/python demo/demo.py [--hosts 4] [--base-port P|0] [--load-seconds 5] [--rate 50] [--no-main-job]
[--down]``; through make: ``make demo DEMO_ARGS="--base-port 0"``. The base port defaults to
$REBOOTLESS_DEMO_BASE_PORT, else 18080; 0 picks free ports (or keeps the running fleet's).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo.build import build
from demo.fleet import DEFAULT_BASE_PORT, DEFAULT_ROOT, Fleet, FleetError, PortTakenError
from demo.loadgen import LoadGen, Target, summary_lines
from demo.wine import WineError


def run_main_job(inventory: Path, rate: float = 50.0) -> int:
    """The rollout step: playbooks/hotpatch.yml on inventory under load (rate requests/s per host), then its
    report. Returns ansible-playbook's exit code. The rollout's own module (demo/main_job.py) runs the load
    generator around the playbook and prints the load figures by host result."""
    from demo.main_job import run_main_job as rollout

    return rollout(inventory, rate=rate)


def port_taken_hint(exc: PortTakenError, hosts: int) -> str:
    """What to type when the fleet's ports are taken: free ports for this demo, or stop the other fleet."""
    return (
        f"demo: port {exc.port} is taken (another checkout's demo fleet?). Either run on free ports:\n"
        f'    make demo DEMO_ARGS="--base-port 0"\n'
        f"or choose a block of {hosts} ports yourself:\n"
        f'    make demo DEMO_ARGS="--base-port 24000"    (or REBOOTLESS_DEMO_BASE_PORT=24000 make demo)\n'
        f"or stop the other fleet, in its checkout:\n"
        f"    .venv/bin/python demo/fleet.py down"
    )


def default_base_port() -> int:
    """$REBOOTLESS_DEMO_BASE_PORT (as demo/fleet.py reads it), else DEFAULT_BASE_PORT."""
    return int(os.environ.get("REBOOTLESS_DEMO_BASE_PORT") or DEFAULT_BASE_PORT)


def _table(fleet: Fleet) -> list[str]:
    rows = [f"{'host':<13} {'build':<12} {'port':>5} {'pid':>7}  {'VERSION':<15} GET 5"]
    for host in fleet.status(probe=False)["hosts"]:
        svc = host["services"][0]
        try:
            version = fleet.request(host["name"], "VERSION")
            get5 = fleet.request(host["name"], "GET 5")
        except (OSError, FleetError) as exc:
            version, get5 = "-", f"(no answer: {exc})"
        leak = "   <- leaks an API key" if get5.startswith("APIKEY") else ""
        rows.append(
            f"{host['name']:<13} {host['appcore_build']:<12} {svc['port']:>5} {svc['pid'] or '-':>7}  "
            f"{version:<15} {get5}{leak}"
        )
    return rows


def _load(fleet: Fleet, rate: float) -> LoadGen:
    targets = []
    for host in fleet.status(probe=False)["hosts"]:
        targets.append(Target(host["name"], "127.0.0.1", host["services"][0]["port"]))
    return LoadGen(targets, rate=rate)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument(
        "--base-port",
        type=int,
        default=default_base_port(),
        help=f"host K listens on base+K-1 (default $REBOOTLESS_DEMO_BASE_PORT or {DEFAULT_BASE_PORT}; 0: free ports)",
    )
    parser.add_argument("--load-seconds", type=float, default=5.0, help="load before the main job (seconds)")
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second per host")
    parser.add_argument("--down", action="store_true", help="stop the fleet at the end")
    parser.add_argument(
        "--no-main-job", dest="main_job", action="store_false", help="only bring the fleet up and load it"
    )
    args = parser.parse_args(argv)

    t0 = time.monotonic()
    built = build()
    print(f"built appsvc.exe and appcore.dll v1 / v2 / v1-mismatch in {built.root} ({time.monotonic() - t0:.1f} s)")
    fleet = Fleet(args.root)
    try:
        t0 = time.monotonic()
        fleet.up(hosts=args.hosts, base_port=args.base_port)
        print(
            f"fleet of {args.hosts} hosts up and answering in {time.monotonic() - t0:.1f} s; inventory {fleet.inventory_path}\n"
        )
        print("\n".join(_table(fleet)))

        print(f"\nload: {args.rate:g} requests/s per host for {args.load_seconds:g} s ...")
        print("\n".join(summary_lines(_load(fleet, args.rate).run(args.load_seconds))))

        rc = 0
        if args.main_job:
            print("\nhotpatch rollout (playbooks/hotpatch.yml) under load ...")
            rc = run_main_job(fleet.inventory_path, args.rate)
            print("\n".join(["", *_table(fleet)]))
    except PortTakenError as exc:
        print(f"demo failed: {exc}\n\n{port_taken_hint(exc, args.hosts)}", file=sys.stderr)
        return 1
    except (FleetError, WineError, OSError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.down:
            fleet.down()
            print("\nfleet stopped")
    if not args.down:
        stop = (
            ".venv/bin/python demo/fleet.py down" if fleet.root == DEFAULT_ROOT.resolve() else f"{fleet.cli_path} down"
        )
        print(f"\nthe fleet keeps running; stop it with: {stop}   (status: {fleet.cli_path} status)")
    return rc


if __name__ == "__main__":
    sys.exit(main())
