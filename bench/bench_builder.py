"""Benchmark the patch builder on a pair of large DLLs (~5 MB each): build time and peak memory.

Generates C sources (many translation units of functions with arithmetic, calls, string literals, switch
tables and globals), builds a base and a patched DLL with mingw-w64 gcc (ms_hook_prologue entries; the patched
build changes a few functions and adds one), then runs the builder in a fresh child process per round and
records wall and CPU time and peak RSS of that process (the builder's whole cost: Python, pefile, iced-x86, the
package). Goal (issue 3): under 3 s and under 500 MB.

    .venv/bin/python bench/bench_builder.py [--rounds 3] [--functions 9000]   # writes bench/results/builder.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench-builder"
RESULT = ROOT / "bench" / "results" / "builder.json"
GCC = "x86_64-w64-mingw32-gcc"
UNITS = 24
CHANGED_EVERY = 997  # every n-th function differs in the patched build

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
started = time.perf_counter()
from ansible_collections.rebootless.windows.plugins.plugin_utils._builder import BuildRequest, build
imported = time.perf_counter()
cpu = time.process_time()
result = build(BuildRequest(sys.argv[2], sys.argv[3], "bench", "1"))
done = time.perf_counter()
print(json.dumps({
    "import_s": imported - started,
    "build_s": done - imported,
    "build_cpu_s": time.process_time() - cpu,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "patched": len(result.patched),
    "new": len(result.new),
    "relocations": len(result.manifest.relocations),
    "blob_bytes": result.manifest.blob_size,
    "package_bytes": len(result.package),
}))
"""


def function_source(index: int, patched: bool) -> str:
    """One exported hotpatchable function; every CHANGED_EVERY-th differs between the builds."""
    change = patched and index % CHANGED_EVERY == 0
    factor = 7 if change else 3
    callee = f"f{index - 1}" if index else "leaf"
    return f"""
__attribute__((ms_hook_prologue, noipa)) __declspec(dllexport) long long f{index}(long long x)
{{
    static const char tag[] = "function {index} says {"patched" if change else "hello"}";
    long long acc = x * {factor} + counters[{index % 64}];
    switch ((x + {index}) & 7) {{
    case 0: acc += {callee}(x - 1) ^ {index}; break;
    case 1: acc -= x << {index % 13}; break;
    case 2: acc ^= (long long)tag[x & 15] * {index}; break;
    case 3: acc += sum_chars(tag) + {index}; break;
    case 4: acc *= {index % 17 + 2}; break;
    case 5: acc += (acc >> 3) - {index}; break;
    case 6: acc = ~acc + {index % 101}; break;
    default: acc += {index * 31 % 1000}; break;
    }}
    for (int i = 0; i < (x & 3); i++)
        acc += (acc * {index % 7 + 1}) ^ i;
    counters[{index % 64}] += 1;
    return acc;
}}
"""


def write_sources(folder: Path, functions: int, patched: bool) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    header = folder / "common.h"
    header.write_text(
        "extern long long counters[64];\nlong long sum_chars(const char *s);\nlong long leaf(long long x);\n"
        + "".join(f"long long f{i}(long long x);\n" for i in range(functions + 1))
    )
    common = folder / "common.c"
    common.write_text(
        '#include "common.h"\nlong long counters[64];\n'
        "__attribute__((noipa)) long long sum_chars(const char *s) { long long n = 0; while (*s) n += *s++; return n; }\n"
        "__attribute__((noipa)) long long leaf(long long x) { return x + 1; }\n"
        + (
            "__attribute__((ms_hook_prologue, noipa)) __declspec(dllexport) long long added(long long x)"
            ' { return sum_chars("new in the patch") + x; }\n'
            if patched
            else ""
        )
    )
    sources = [common]
    per_unit = (functions + UNITS - 1) // UNITS
    for unit in range(UNITS):
        path = folder / f"unit{unit}.c"
        body = "".join(
            function_source(i, patched) for i in range(unit * per_unit, min(functions, (unit + 1) * per_unit))
        )
        path.write_text('#include "common.h"\n' + body)
        sources.append(path)
    return sources


def build_dll(folder: Path, functions: int, patched: bool) -> Path:
    out = folder / "big.dll"
    if out.exists():
        return out
    sources = write_sources(folder / "src", functions, patched)

    def compile_one(src: Path) -> Path:
        obj = src.with_suffix(".o")
        subprocess.run([GCC, "-O2", "-c", str(src), "-o", str(obj)], check=True)
        return obj

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        objects = list(pool.map(compile_one, sources))
    subprocess.run(
        [
            GCC,
            "-shared",
            "-o",
            str(out),
            *map(str, objects),
            "-Wl,--no-insert-timestamp",
            "-Wl,--image-base=0x6a000000",
        ],
        check=True,
    )
    return out


def run_once(base: Path, patched: Path) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT / ".collections"), str(base), str(patched)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--functions", type=int, default=9000)
    args = parser.parse_args()
    subprocess.run([sys.executable, "-c", "import conftest"], cwd=ROOT, check=True)  # makes the .collections link
    started = time.perf_counter()
    folder = CACHE / f"n{args.functions}"
    base = build_dll(folder / "base", args.functions, patched=False)
    patched = build_dll(folder / "patched", args.functions, patched=True)
    compile_s = time.perf_counter() - started
    rounds = [run_once(base, patched) for _unused in range(args.rounds)]
    build_times = [r["build_s"] for r in rounds]
    peaks = [r["peak_rss_mb"] for r in rounds]
    result = {
        "benchmark": "builder",
        "base_bytes": base.stat().st_size,
        "patched_bytes": patched.stat().st_size,
        "functions": args.functions,
        "rounds": args.rounds,
        "build_seconds_median": statistics.median(build_times),
        "build_seconds_max": max(build_times),
        "build_cpu_seconds_median": statistics.median(r["build_cpu_s"] for r in rounds),
        "import_seconds_median": statistics.median(r["import_s"] for r in rounds),
        "load_average_1min": os.getloadavg()[0],
        "peak_rss_mb_max": max(peaks),
        "goal": {"build_seconds": 3.0, "peak_rss_mb": 500},
        "meets_goal": statistics.median(build_times) < 3.0 and max(peaks) < 500,
        # wall time follows the machine's load (shared CI runners); CPU time is the builder's own cost
        "meets_goal_cpu": statistics.median(r["build_cpu_s"] for r in rounds) < 3.0 and max(peaks) < 500,
        "patched": rounds[0]["patched"],
        "new": rounds[0]["new"],
        "relocations": rounds[0]["relocations"],
        "blob_bytes": rounds[0]["blob_bytes"],
        "package_bytes": rounds[0]["package_bytes"],
        "fixture_compile_seconds": compile_s,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "maxrss_self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
