"""Internal to rebootless.windows: command-line entry of the patch builder, for build pipelines.

    python -m ansible_collections.rebootless.windows.plugins.plugin_utils._builder \\
        --base v1/appcore.dll --patched v2/appcore.dll --out appcore-fix.hpk --id appcore-fix --version 1.0.1

Exit codes: 0 package written (hotpatchable, or cold-only with --cold-only-ok), 1 refused (nothing written,
reasons on stderr), 2 an input is unreadable or not a PE image the builder understands.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from ...module_utils.hotpatch.errors import EngineError
from .build import BuildRefused, BuildRequest, build

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hotpatch-build",
        description="Build a hotpatch package from a base and a patched build of one PE module.",
    )
    parser.add_argument("--base", required=True, help="the module as deployed (the base image)")
    parser.add_argument("--patched", required=True, help="the fixed build of the same module")
    parser.add_argument("--out", required=True, help="where to write the package (.hpk)")
    parser.add_argument("--id", dest="package_id", required=True, help="package id (letters, digits, ._+-)")
    parser.add_argument("--version", required=True, help="package version (letters, digits, ._+-)")
    parser.add_argument("--description", default="", help="free text shown to operators")
    parser.add_argument("--base-map", help="linker /map file of the base build (builds without COFF symbols)")
    parser.add_argument("--patched-map", help="linker /map file of the patched build")
    parser.add_argument("--module-name", help="file name the module is loaded as (default: the base file's)")
    parser.add_argument(
        "--cold-only-ok",
        action="store_true",
        help="when something cannot be hotpatched, write a cold-only package instead of failing",
    )
    parser.add_argument("--json", action="store_true", help="print the result as one JSON document on stdout")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the builder; returns the exit code (see module docstring)."""
    args = _parser().parse_args(argv)
    request = BuildRequest(
        base=args.base,
        patched=args.patched,
        package_id=args.package_id,
        version=args.version,
        description=args.description,
        base_map=args.base_map,
        patched_map=args.patched_map,
        module_name=args.module_name,
        cold_only_ok=args.cold_only_ok,
    )
    try:
        result = build(request)
    except BuildRefused as exc:
        _report(args.json, {"written": False, "refused": [r.__dict__ for r in exc.refusals]})
        print(str(exc), file=sys.stderr)
        return 1
    except (EngineError, OSError) as exc:
        _report(args.json, {"written": False, "error": str(exc)})
        print(f"hotpatch-build: {exc}", file=sys.stderr)
        return 2
    tmp = f"{args.out}.tmp{os.getpid()}"
    with open(tmp, "wb") as handle:
        handle.write(result.package)
    os.replace(tmp, args.out)
    summary = {
        "written": True,
        "dest": args.out,
        "sha256": result.sha256,
        "hotpatchable": result.hotpatchable,
        "patched": result.patched,
        "new": result.new,
        "refused": [r.__dict__ for r in result.refused],
    }
    _report(args.json, summary)
    kind = "hotpatch" if result.hotpatchable else "cold-only"
    print(
        f"{args.out}: {kind} package, {len(result.patched)} patched, {len(result.new)} new, "
        f"{len(result.refused)} refused, sha256 {result.sha256}",
        file=sys.stderr,
    )
    for refusal in result.refused:
        print(f"  refused {refusal.function}: {refusal.reason}", file=sys.stderr)
    return 0


def _report(as_json: bool, data: dict[str, object]) -> None:
    if as_json:
        print(json.dumps(data, sort_keys=True))


if __name__ == "__main__":
    sys.exit(main())
