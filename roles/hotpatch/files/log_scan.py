"""Health probe run on the managed host: count new lines matching an error pattern in a log file.

Argument: base64 of a JSON object {path, pattern, offset}; lines from byte ``offset`` on are scanned (from 0 when
the file is now shorter: it was rotated or recreated). Prints {ok, detail, matches} and exits 0; exits 2 (still
printing that object, with what to fix) on a malformed argument, a pattern that is not a regex or an unreadable
file. Line text is never printed (it may hold secrets): only counts.
Runs on Python >= 3.8, standard library only.
"""

from __future__ import annotations

import base64
import json
import os
import re
import sys


def scan(path: str, pattern: str, offset: int) -> dict:
    """Return {ok, detail, matches}; a missing file is no news (ok) and said so. The detail names the file, the
    pattern and where the scan started, so a failed check says what was looked for and what was found."""
    if not os.path.exists(path):
        return {"ok": True, "detail": f"{path} does not exist: no new errors", "matches": 0}
    size = os.path.getsize(path)
    start = offset if 0 <= offset <= size else 0
    regex = re.compile(pattern)
    matches = 0
    with open(path, "rb") as handle:
        handle.seek(start)
        for raw in handle:
            if regex.search(raw.decode("utf-8", "replace")):
                matches += 1
    detail = f"{matches} new line(s) matching /{pattern}/ in {path} since byte {start}"
    return {"ok": matches == 0, "detail": detail, "matches": matches}


def main(argv: list) -> int:
    try:
        spec = json.loads(base64.b64decode(argv[1]).decode("utf-8"))
        path, pattern = str(spec["path"]), str(spec.get("pattern") or "(?i)error")
        offset = int(spec.get("offset") or 0)
    except (IndexError, ValueError, KeyError, TypeError) as exc:
        print(json.dumps({"ok": False, "detail": f"bad scan argument: {exc}", "matches": None}))
        return 2
    try:
        result = scan(path, pattern, offset)
    except re.error as exc:
        detail = f"pattern /{pattern}/ is not a valid regular expression ({exc}): fix the check's pattern"
        print(json.dumps({"ok": False, "detail": detail, "matches": None}))
        return 2
    except OSError as exc:
        detail = f"cannot read {path} ({exc.strerror or exc}): check the path and the connection user's rights"
        print(json.dumps({"ok": False, "detail": detail, "matches": None}))
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
