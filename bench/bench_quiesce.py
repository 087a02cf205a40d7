"""Benchmark the Wine backend: how long a busy Windows process is paused, and what remote work costs.

Builds a small spinner (mingw-w64), runs it under Wine with 2, 16 and 64 busy threads, and measures:
- pause per quiesce + resume (µs, as Quiesced.resume() reports it: first thread stopped -> last detached),
  without and with the stack scan of the activeness check;
- one remote call (RtlAddFunctionTable + RtlDeleteFunctionTable pair, while quiesced);
- allocate_near + free (each stops the process briefly on its own).

    .venv/bin/python bench/bench_quiesce.py [--rounds 1000]   # writes bench/results/quiesce.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / ".collections"))

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.backends.wine import (  # noqa: E402
    WineBackend,
    WineProcess,
)

WINE64 = "/usr/lib/wine/wine64"
PREFIX = ROOT / ".cache" / "wineprefix-wine-backend"
SPINNER = r"""
#include <windows.h>
#include <stdio.h>
#include <stdlib.h>
static volatile LONG64 counts[256];
static DWORD WINAPI spin(LPVOID p) { for (;;) counts[(INT_PTR)p]++; return 0; }
int main(int argc, char **argv) {
    int n = atoi(argv[1]);
    for (int i = 0; i < n; i++) CreateThread(NULL, 0, spin, (LPVOID)(INT_PTR)i, 0, NULL);
    printf("ready\n"); fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin)) { LONG64 t = 0; for (int i = 0; i < n; i++) t += counts[i];
        printf("%lld\n", t); fflush(stdout); }
    return 0;
}
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    env.update({"WINEPREFIX": str(PREFIX), "WINEDEBUG": "-all", "WINEDLLOVERRIDES": "mscoree,mshtml="})
    return env


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median": round(statistics.median(ordered), 1),
        "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1),
        "max": round(ordered[-1], 1),
        "samples": len(ordered),
    }


def _measure(handle: WineProcess, rounds: int) -> dict[str, object]:
    plain = []
    for _unused in range(rounds):
        plain.append(float(handle.quiesce().resume()))
    stacks = []
    for _unused in range(max(rounds // 4, 10)):
        stacks.append(float(handle.quiesce(with_stacks=True).resume()))
    module = next(m for m in handle.modules() if m.name.lower().endswith(".exe"))
    table = handle.allocate_near(module.base, 0x1000)
    handle.write(table, struct.pack("<III", table - module.base, table - module.base + 1, table - module.base + 16))
    calls = []
    quiesced = handle.quiesce()
    try:
        for _unused in range(max(rounds // 10, 20)):
            started = time.perf_counter_ns()
            handle.add_function_table(table, 1, module.base)
            handle.delete_function_table(table)
            calls.append((time.perf_counter_ns() - started) / 2000.0)
    finally:
        quiesced.resume()
    handle.free(table, 0x1000)
    allocs = []
    for _unused in range(max(rounds // 10, 20)):
        started = time.perf_counter_ns()
        address = handle.allocate_near(module.base, 0x1000)
        allocs.append((time.perf_counter_ns() - started) / 1000.0)
        handle.free(address, 0x1000)
    quiesced = handle.quiesce()
    threads = len(quiesced.threads)
    quiesced.resume()
    return {
        "threads_in_process": threads,
        "pause_us": _summary(plain),
        "pause_with_stacks_us": _summary(stacks),
        "remote_call_us": _summary(calls),
        "allocate_near_us": _summary(allocs),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--threads", type=int, nargs="*", default=[2, 16, 64])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "quiesce.json")
    args = parser.parse_args()
    if not (PREFIX / "system.reg").is_file():
        PREFIX.mkdir(parents=True, exist_ok=True)
        subprocess.run([WINE64, "wineboot", "--init"], env=_env(), check=True, capture_output=True)
    results: dict[str, object] = {
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "loadavg_at_start": os.getloadavg()[0],
        },
        "rounds": args.rounds,
        "by_threads": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "spinner.c"
        source.write_text(SPINNER)
        exe = Path(tmp) / "spinner.exe"
        subprocess.run(["x86_64-w64-mingw32-gcc", "-O2", "-o", str(exe), str(source)], check=True)
        for threads in args.threads:
            proc = subprocess.Popen(
                [WINE64, str(exe), str(threads)], env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            assert proc.stdin is not None and proc.stdout is not None
            try:
                assert proc.stdout.readline().strip() == "ready"
                handle = WineBackend().open(proc.pid)
                try:
                    entry = _measure(handle, args.rounds)
                finally:
                    handle.close()
                proc.stdin.write("count\n")
                proc.stdin.flush()
                entry["process_alive_after"] = int(proc.stdout.readline()) > 0
                results["by_threads"][str(threads)] = entry  # type: ignore[index]
                print(threads, json.dumps(entry))
            finally:
                proc.kill()
                proc.wait()
    results["machine"]["loadavg_at_end"] = os.getloadavg()[0]  # type: ignore[index]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
