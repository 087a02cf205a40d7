"""The demo's main job: hotpatch the simulated fleet under load and show what happened.

``run_main_job(inventory)`` builds the v1 -> v2 appcore package with the patch builder (cached by content), starts
the load generator against every host of the inventory, runs ``ansible-playbook playbooks/hotpatch.yml`` with the
demo's policy (demo/policy/inventory.yml), stops the load generator, re-renders the run report with the load
figures, and prints the per-host summary and the load seen by hotpatched hosts versus cold-patched ones.

CLI: ``.venv/bin/python demo/main_job.py [--inventory demo/run/inventory.yml] [--check] [--no-load] [-e K=V ...]``;
``--package-only DIR`` only builds the package (the Molecule scenario uses it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import conftest  # makes the ansible_collections.rebootless.windows link and puts it on sys.path
from ansible_collections.rebootless.windows.plugins.action.hotpatch_report import attach_loadgen, write_reports
from demo.build import build as build_demo
from demo.loadgen import LoadGen, LoadResult, targets_from_inventory

__all__ = [
    "DemoPackage",
    "build_demo_package",
    "playbook_command",
    "playbook_environment",
    "run_main_job",
    "run_playbook",
]

DEMO_DIR = Path(__file__).resolve().parent
REPO_ROOT = conftest.ROOT
PLAYBOOK = REPO_ROOT / "playbooks" / "hotpatch.yml"
POLICY = DEMO_DIR / "policy" / "inventory.yml"
PACKAGE_ID = "appcore-cve-fix"
PACKAGE_VERSION = "2.0.0"


@dataclass(frozen=True)
class DemoPackage:
    """The demo's hotpatch package: path on the controller, SHA-256 (hex), whether it is hotpatchable."""

    path: Path
    sha256: str
    hotpatchable: bool


def build_demo_package(out_dir: Path) -> DemoPackage:
    """Build appcore.dll v1 -> v2 into ``out_dir/appcore-cve-fix-2.0.0.hpk`` with the patch builder.

    Reuses the file when the inputs (the two DLLs) are unchanged. Raises demo.build.BuildError when mingw-w64
    is missing, and the builder's BuildRefused when v1 -> v2 stops being hotpatchable.
    """
    from ansible_collections.rebootless.windows.plugins.plugin_utils._builder.build import BuildRequest, build

    built = build_demo()
    base, patched = built.appcore_dll("v1"), built.appcore_dll("v2")
    key = hashlib.sha256(base.read_bytes() + patched.read_bytes()).hexdigest()[:16]
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{PACKAGE_ID}-{PACKAGE_VERSION}.hpk"
    stamp = out_dir / f"{target.name}.inputs"
    if target.is_file() and stamp.is_file() and stamp.read_text().strip() == key:
        data = target.read_bytes()
        return DemoPackage(target, hashlib.sha256(data).hexdigest(), True)
    result = build(
        BuildRequest(
            base=str(base),
            patched=str(patched),
            package_id=PACKAGE_ID,
            version=PACKAGE_VERSION,
            description="AppSvc: GET bounds check (API keys leaked by GET 5..7), VERSION 1.0.1",
        )
    )
    target.write_bytes(result.package)
    stamp.write_text(key + "\n")
    return DemoPackage(target, result.sha256, result.hotpatchable)


def playbook_command(
    inventory: Path, package: Path, report_dir: Path, extra_vars: Mapping[str, Any] | None = None, check: bool = False
) -> list[str]:
    """The ansible-playbook command line of the main job (inventory + demo policy, demo play variables)."""
    play_vars: dict[str, Any] = {
        "hotpatch_package": str(package),
        "hotpatch_target": "demo_fleet",
        "hotpatch_max_fail_percentage": 50,
        "hotpatch_report_dir": str(report_dir),
        "hotpatch_report_title": "Demo fleet: appcore-cve-fix 2.0.0",
        "hotpatch_report_redact": ["APIKEY-[A-Za-z0-9-]+"],
    }
    play_vars.update(extra_vars or {})
    cmd = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory), "-i", str(POLICY)]
    cmd += ["-e", json.dumps(play_vars), str(PLAYBOOK)]
    if check:
        cmd.append("--check")
    return cmd


def playbook_environment() -> dict[str, str]:
    """Environment for ansible-playbook: the collection and its dependencies on the path, Wine quiet."""
    env = dict(os.environ)
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", f"{REPO_ROOT / '.collections'}:{REPO_ROOT / '.cache' / 'collections'}")
    env.setdefault("ANSIBLE_NOCOLOR", "1")
    # Ansible's default of 5 forks would run a wave of 16 simulated hosts in four rounds per task.
    env.setdefault("ANSIBLE_FORKS", "16")
    env.setdefault("ANSIBLE_DEPRECATION_WARNINGS", "False")
    env.setdefault("ANSIBLE_LOCALHOST_WARNING", "False")
    env.setdefault("WINEDEBUG", "-all")
    env.setdefault("WINEDLLOVERRIDES", "mscoree,mshtml=")
    env.pop("DISPLAY", None)
    return env


def run_playbook(
    inventory: Path, report_dir: Path, extra_vars: Mapping[str, Any] | None = None, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run the main job's playbook once, without load, capturing its output (tests and benchmarks)."""
    package = build_demo_package(inventory.resolve().parent / "packages")
    cmd = playbook_command(inventory.resolve(), package.path, report_dir.resolve(), extra_vars, check)
    return subprocess.run(cmd, cwd=REPO_ROOT, env=playbook_environment(), check=False, capture_output=True, text=True)


REASON_WIDTH = 72


def reason_lines(host: Mapping[str, Any], width: int = REASON_WIDTH) -> list[str]:
    """A host's reasons ("; "-joined, or its decision reason) wrapped at word boundaries to lines of at most width
    characters (a longer single word stays whole), led by "(unsigned package allowed)" when the host allowed one, as
    in hotpatch-report.md; the report files keep the same text unwrapped."""
    text = "; ".join(str(r) for r in host["reasons"]) if host["reasons"] else str(host["decision_reason"] or "")
    if host.get("allow_unsigned"):
        text = f"(unsigned package allowed) {text}"
    return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False) or [""]


def _summary(report: Mapping[str, Any]) -> list[str]:
    head = f"{'host':<13} {'wave':>4}  {'decision':<9} {'result':<13} {'rolled back':<11} {'pause µs':>8}  "
    rows = [head + "reason"]
    for host in report["hosts"]:
        first, *more = reason_lines(host)
        rows.append(
            f"{host['host']:<13} {host['wave'] or '-':>4}  {host['decision'] or '-':<9} {host['result']:<13} "
            f"{'yes' if host['rolled_back'] else '':<11} {host['pause_us_max'] or '-':>8}  {first}"
        )
        rows += [" " * len(head) + line for line in more]
    t = report["totals"]
    gate = sum(len(w["failed"]) for w in report.get("waves") or [])
    rows.append(
        f"totals: {t['hotpatched']} hotpatched, {t['cold_patched']} cold-patched, {t['deferred']} deferred, "
        f"{t['skipped']} skipped, {t['failed']} failed, {t['not_run']} not run, {t['rolled_back']} rolled back"
        + (f" ({gate} counted as failed by the wave gate)" if gate else "")
        + (f"; STOPPED: {report['stopped']}" if report.get("stopped") else "")
    )
    return rows


def _load_rows(report: Mapping[str, Any]) -> list[str]:
    load = report.get("loadgen")
    if not load:
        return []
    rows = [f"{'hosts':<14} {'targets':>7} {'requests':>9} {'failed':>7} {'p50 ms':>8} {'p99 ms':>8}"]
    for group, g in sorted(load["groups"].items()):
        p50 = "-" if g["p50_ms"] is None else f"{g['p50_ms']:.2f}"
        p99 = "-" if g["p99_ms"] is None else f"{g['p99_ms']:.2f}"
        rows.append(f"{group:<14} {g['targets']:>7} {g['sent']:>9} {g['failed']:>7} {p50:>8} {p99:>8}")
    return rows


def run_main_job(
    inventory: Path,
    *,
    extra_vars: Mapping[str, Any] | None = None,
    check: bool = False,
    load: bool = True,
    rate: float = 50.0,
    report_dir: Path | None = None,
    quiet: bool = False,
) -> int:
    """Run the rollout on the fleet of ``inventory`` under load; print the summary; return ansible-playbook's exit
    code (0: every host hotpatched, cold-patched, deferred or skipped; 2: a host failed or the rollout stopped).

    The report lands in ``report_dir`` (default: ``<inventory folder>/report``) with the load generator's JSON
    (``loadgen.json``) and its figures charted in the HTML.
    """
    inventory = inventory.resolve()
    report_dir = (report_dir or inventory.parent / "report").resolve()
    package = build_demo_package(inventory.parent / "packages")
    cmd = playbook_command(inventory, package.path, report_dir, extra_vars, check)
    gen = LoadGen(targets_from_inventory(inventory), rate=rate).start() if load else None
    result: LoadResult | None = None
    try:
        proc = subprocess.run(
            cmd, cwd=REPO_ROOT, env=playbook_environment(), check=False, capture_output=quiet, text=True
        )
    finally:
        if gen is not None:
            result = gen.stop()
    report_path = report_dir / "hotpatch-report.json"
    if not report_path.is_file():
        print(f"main job: no report at {report_path} (ansible-playbook exit {proc.returncode})", file=sys.stderr)
        if quiet:
            print(proc.stdout[-4000:], proc.stderr[-4000:], file=sys.stderr)
        return proc.returncode or 1
    report = json.loads(report_path.read_text(encoding="utf-8"))
    if result is not None:
        result.write(report_dir / "loadgen.json")
        report = attach_loadgen(report, result.to_json())
        write_reports(report, report_dir)
    print("\n".join(["", *_summary(report)]))
    if report.get("loadgen"):
        print("\nload during the rollout, by the host's result:")
        print("\n".join(_load_rows(report)))
    print(f"\nreport: {report_dir / 'hotpatch-report.html'} (also .md, .json, .junit.xml)")
    return proc.returncode


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--inventory", type=Path, default=DEMO_DIR / "run" / "inventory.yml")
    parser.add_argument("--check", action="store_true", help="check mode: change nothing, report what would happen")
    parser.add_argument("--no-load", action="store_true", help="do not run the load generator")
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second per host")
    parser.add_argument("--report-dir", type=Path)
    parser.add_argument(
        "--package-only", type=Path, metavar="DIR", help="only build the package into DIR, print its path"
    )
    parser.add_argument(
        "-e", "--extra-var", action="append", default=[], help="KEY=VALUE (VALUE parsed as JSON when it is)"
    )
    args = parser.parse_args(argv)
    if args.package_only:
        print(build_demo_package(args.package_only).path)
        return 0
    extra: dict[str, Any] = {}
    for item in args.extra_var:
        key, _sep, value = item.partition("=")
        try:
            extra[key] = json.loads(value)
        except ValueError:
            extra[key] = value
    if not args.inventory.is_file():
        parser.error(f"{args.inventory} does not exist: bring the fleet up first (demo/fleet.py up)")
    return run_main_job(
        args.inventory,
        extra_vars=extra,
        check=args.check,
        load=not args.no_load,
        rate=args.rate,
        report_dir=args.report_dir,
    )


if __name__ == "__main__":
    sys.exit(main())
