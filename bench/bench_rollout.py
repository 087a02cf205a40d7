"""Benchmark of the main job on the demo fleet; writes JSON (never asserts on time).

For each fleet size (default 4 and 16 hosts): bring a fresh fleet up (no mismatch host, no fault host), run
playbooks/hotpatch.yml under load twice on two fresh fleets - once as a hotpatch rollout, once forcing the cold path
(stage + service restart) on every host - and record:

- end-to-end rollout seconds (ansible-playbook wall time);
- per host, seconds per phase from the run report (facts, preflight, decide, apply, verify, cold), where ``apply``
  is the win_hotpatch call (package transfer check by SHA-256 + engine run) and preflight/verify/cold include the
  health checks; the longest process pause (µs) the engine measured;
- requests sent/failed and p50/p99 latency seen by the load generator during each run.

Phases run in lockstep per wave (Ansible's linear strategy), so a phase's seconds are a wave's wall time.

Usage: ``.venv/bin/python bench/bench_rollout.py [--hosts 4 16] [--rate 20] [--out bench/results/rollout.json]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo.fleet import Fleet
from demo.main_job import playbook_environment, run_main_job

PHASES = ("facts", "preflight", "decide", "apply", "verify", "rollback", "cold")


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "max": None}
    return {"median": round(statistics.median(values), 3), "max": round(max(values), 3)}


def one_run(hosts: int, base_port: int, rate: float, cold: bool) -> dict[str, Any]:
    """Fresh fleet of ``hosts``, one main-job run (hotpatch, or forced cold path), its figures."""
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
        root = Path(tmp)
        fleet = Fleet(root / "fleet")
        fleet.up(hosts=hosts, base_port=base_port, mismatch_host=0)
        extra: dict[str, Any] = {"demo_fault_hosts": [], "hotpatch_waves": [1, "25%", "100%"]}
        if cold:
            extra.update(hotpatch_force_cold=True, hotpatch_outside_window="force")
        try:
            t0 = time.monotonic()
            rc = run_main_job(fleet.inventory_path, extra_vars=extra, rate=rate, report_dir=root / "report", quiet=True)
            wall = time.monotonic() - t0
        finally:
            fleet.down()
        report = json.loads((root / "report" / "hotpatch-report.json").read_text())
    per_host = report["hosts"]
    load = report.get("loadgen") or {}
    return {
        "hosts": hosts,
        "mode": "cold" if cold else "hotpatch",
        "rc": rc,
        "rollout_seconds": round(wall, 3),
        "waves": len(report["waves"]),
        "results": {k: v for k, v in report["totals"].items() if v},
        "phase_seconds": {p: _stats([h["phases"][p] for h in per_host if p in h["phases"]]) for p in PHASES},
        "pause_us": _stats([float(h["pause_us_max"]) for h in per_host if h["pause_us_max"]]),
        "requests": {"sent": load.get("sent"), "failed": load.get("failed"), "by_result": load.get("groups")},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--hosts", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second per host")
    parser.add_argument("--base-port", type=int, default=30080)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "rollout.json")
    args = parser.parse_args(argv)
    runs = []
    for hosts in args.hosts:
        for cold in (False, True):
            run = one_run(hosts, args.base_port, args.rate, cold)
            print(json.dumps({k: run[k] for k in ("hosts", "mode", "rc", "rollout_seconds", "results")}), flush=True)
            runs.append(run)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"benchmark": "rollout", "rate_per_host": args.rate, "forks": playbook_environment()["ANSIBLE_FORKS"]}
    args.out.write_text(json.dumps({**meta, "runs": runs}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
