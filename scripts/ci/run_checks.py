"""Run the CI steps one after another, continue past failures, and end with a summary table.

Setup steps (before ``--``) must all pass, or the checks after them are reported NOT RUN. Each step is
``make <step>``; its output streams through unchanged. A step may leave a note in $CHECK_NOTES_DIR/<name>
starting with "EMPTY:" (a test folder or scenario list with nothing in it yet): it is shown as EMPTY, which is
not a failure but is never shown as PASS. Exits 1 when any step failed or did not run.

$CHECK_BUDGET_SECONDS (optional) bounds the whole run: a step still running when the budget is spent is killed
(with everything it started) and reported FAIL, and later steps are NOT RUN, so the summary is always printed
before an outer time limit ends the job.

Usage: run_checks.py --setup STEP... -- CHECK...
Runs with the system Python (the venv may not exist yet): standard library only.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

NOTES = Path(".cache") / "ci" / "notes"
# pytest's closing line, e.g. "==== 7 failed, 223 passed in 109.18s ====": shown in the table's detail column.
PYTEST_TOTALS = re.compile(r"^=+ (.*\b(?:passed|failed|errors?|skipped|no tests ran)\b.*) in [0-9.]+s")


@dataclass
class Outcome:
    """One step's result: status is PASS, FAIL, EMPTY or NOT RUN; seconds is wall time."""

    name: str
    status: str
    seconds: float
    detail: str = ""


def run_make(name: str, timeout: float | None) -> tuple[int | None, list[str]]:
    """Run ``make <name>`` in its own process group, echoing its output.

    Returns (exit code or None if it hit the timeout, pytest closing lines seen in the output).
    """
    proc = subprocess.Popen(
        ["make", "--no-print-directory", name],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    totals: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            sys.stdout.buffer.write(raw)
            sys.stdout.buffer.flush()
            found = PYTEST_TOTALS.match(raw.decode("utf-8", "replace").strip())
            if found:
                totals.append(found.group(1))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc: int | None = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        rc = None
    reader.join(timeout=30)
    return rc, totals


def run_step(name: str, timeout: float | None) -> Outcome:
    """Run ``make <name>`` with notes enabled; classify its exit code and note."""
    banner = f"==== {name} "
    print(f"\n{banner}{'=' * (100 - len(banner))}", flush=True)
    start = time.monotonic()
    sys.stdout.flush()
    rc, totals = run_make(name, timeout)
    seconds = time.monotonic() - start
    tests = "; ".join(totals)
    if rc is None:
        return Outcome(name, "FAIL", seconds, "killed: time budget ($CHECK_BUDGET_SECONDS) spent")
    note = NOTES / name  # written by scripts/ci/pytest_suite.sh and molecule_all.sh
    note_text = note.read_text(encoding="utf-8").strip() if note.exists() else ""
    if rc != 0:
        return Outcome(name, "FAIL", seconds, tests or f"exit {rc}")
    if note_text.startswith("EMPTY:"):
        return Outcome(name, "EMPTY", seconds, note_text.removeprefix("EMPTY:").strip())
    return Outcome(name, "PASS", seconds, tests)


def summary(outcomes: list[Outcome], total: float) -> str:
    """The table printed at the end, one row per step."""
    width = max(len(o.name) for o in outcomes)
    rows = [f"{'step'.ljust(width)}  status   seconds  detail", f"{'-' * width}  -------  -------  ------"]
    rows += [f"{o.name.ljust(width)}  {o.status.ljust(7)}  {o.seconds:7.1f}  {o.detail}" for o in outcomes]
    rows.append(f"{'total'.ljust(width)}           {total:7.1f}")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    """Parse ``--setup A B -- C D``, run everything, print the table, return the exit code."""
    if "--setup" not in argv or "--" not in argv:
        print(__doc__, file=sys.stderr)
        return 2
    split = argv.index("--")
    setup, checks = argv[argv.index("--setup") + 1 : split], argv[split + 1 :]
    shutil.rmtree(NOTES, ignore_errors=True)
    NOTES.mkdir(parents=True, exist_ok=True)
    os.environ["CHECK_NOTES_DIR"] = str(NOTES.resolve())
    budget = float(os.environ["CHECK_BUDGET_SECONDS"]) if os.environ.get("CHECK_BUDGET_SECONDS") else None
    start = time.monotonic()
    outcomes: list[Outcome] = []
    steps = setup + checks
    for index, step in enumerate(steps):
        remaining = None if budget is None else budget - (time.monotonic() - start)
        if remaining is not None and remaining <= 0:
            outcomes += [Outcome(rest, "NOT RUN", 0.0, "time budget spent") for rest in steps[index:]]
            break
        outcomes.append(run_step(step, remaining))
        if step in setup and outcomes[-1].status == "FAIL":
            outcomes += [Outcome(rest, "NOT RUN", 0.0, f"setup step {step} failed") for rest in steps[index + 1 :]]
            break
    failed = [o for o in outcomes if o.status in ("FAIL", "NOT RUN")]
    passed = [o for o in outcomes if o.status == "PASS"]
    print(f"\n==== summary {'=' * 87}")
    print(summary(outcomes, time.monotonic() - start))
    for o in outcomes:
        if o.status == "EMPTY":
            print(f"note: {o.name} ran nothing: {o.detail}")
    print(f"checks: {len(passed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
