"""Check that ansible-doc can list and render every documented plugin of rebootless.windows.

Each plugin folder that carries documentation is listed with ``ansible-doc -t TYPE -l rebootless.windows``; every
module file must appear in that list, and every listed plugin must render with ``ansible-doc -t TYPE NAME``
without an error or warning. Zero plugins is reported, not failed.

Usage: docs_check.py ANSIBLE_DOC
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

COLLECTION = "rebootless.windows"
# plugins/<folder> -> ansible-doc plugin type. action/module_utils/plugin_utils/doc_fragments carry no docs.
DOC_TYPES = {
    "modules": "module",
    "filter": "filter",
    "test": "test",
    "lookup": "lookup",
    "callback": "callback",
    "connection": "connection",
    "inventory": "inventory",
    "become": "become",
    "cache": "cache",
    "vars": "vars",
    "strategy": "strategy",
}


def run_doc(ansible_doc: str, args: list[str]) -> tuple[dict[str, object], list[str]]:
    """Run ansible-doc with --json; return the parsed document and the problems seen (exit code, stderr)."""
    proc = subprocess.run([ansible_doc, "--json", *args], capture_output=True, text=True, check=False)
    issues = []
    if proc.returncode != 0:
        issues.append(f"ansible-doc {' '.join(args)} exited {proc.returncode}")
    for line in proc.stderr.splitlines():
        if "[ERROR]" in line or "[WARNING]" in line or "Traceback" in line:
            issues.append(f"ansible-doc {' '.join(args)}: {line.strip()}")
    try:
        data = json.loads(proc.stdout or "{}")
    except json.JSONDecodeError as exc:
        issues.append(f"ansible-doc {' '.join(args)} printed no JSON ({exc})")
        data = {}
    return data, issues


def module_files(folder: Path) -> list[str]:
    """Module names that plugins/modules/ defines (one per .py file, private _ files excluded)."""
    return sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_") and p.stem != "__init__")


def main(argv: list[str]) -> int:
    """Print one line per rendered plugin; exit 1 listing every problem found."""
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    ansible_doc = argv[1]
    problems: list[str] = []
    rendered = 0
    for folder, plugin_type in DOC_TYPES.items():
        path = Path("plugins") / folder
        if not path.is_dir():
            continue
        listing, issues = run_doc(ansible_doc, ["-t", plugin_type, "-l", COLLECTION])
        problems += issues
        names = sorted(listing)
        if plugin_type == "module":
            missing = [m for m in module_files(path) if f"{COLLECTION}.{m}" not in listing]
            problems += [f"module {m}: not listed by ansible-doc -l (missing or broken DOCUMENTATION)" for m in missing]
        for name in names:
            doc, issues = run_doc(ansible_doc, ["-t", plugin_type, name])
            problems += issues
            entry = doc.get(name)
            if not isinstance(entry, dict) or "doc" not in entry:
                problems.append(f"{plugin_type} {name}: ansible-doc rendered no documentation")
                continue
            rendered += 1
            print(f"docs_check: {plugin_type} {name}: ok")
    for problem in problems:
        print(f"docs_check: {problem}", file=sys.stderr)
    print(f"docs_check: {rendered} plugins rendered, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
