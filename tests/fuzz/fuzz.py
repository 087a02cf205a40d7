"""atheris (libFuzzer) harness: ``python tests/fuzz/fuzz.py {package|image} [libFuzzer flags] [corpus dirs]``.

Seeds come from tests/fuzz/targets.py (a valid package) and from real PE files given as corpus directories.
The run is bounded by libFuzzer's -runs / -max_total_time flags; a crash writes a reproducer and exits non-zero.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / ".collections"))

with atheris.instrument_imports():
    from ansible_collections.rebootless.windows.tests.fuzz.targets import TARGETS


def main() -> None:
    target = TARGETS[sys.argv.pop(1)]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
