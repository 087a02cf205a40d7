#!/usr/bin/env bash
# Run one pytest suite. A folder with no test files yet is reported as EMPTY (not a silent pass); a folder WITH
# test files where pytest collects nothing (exit 5) is a failure.
# Usage: pytest_suite.sh PYTHON DIR [pytest args...]
set -euo pipefail
py="$1"
dir="$2"
shift 2
name="$(basename "$dir")"

note() {
    if [[ -n "${CHECK_NOTES_DIR:-}" ]]; then
        mkdir -p "$CHECK_NOTES_DIR"
        printf '%s\n' "$1" >"$CHECK_NOTES_DIR/$name"
    fi
}

if [[ -z "$(find "$dir" \( -name 'test_*.py' -o -name '*_test.py' \) -print -quit 2>/dev/null)" ]]; then
    echo "pytest: $dir has no test files yet: 0 tests ran"
    note "EMPTY: $dir has no test files yet"
    exit 0
fi

rc=0
"$py" -m pytest "$dir" "$@" || rc=$?
if ((rc == 5)); then
    echo "pytest: $dir has test files but pytest collected no tests (exit 5): counted as a failure" >&2
    exit 1
fi
exit "$rc"
