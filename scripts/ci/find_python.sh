#!/usr/bin/env bash
# Make pythonX.Y findable on PATH for ansible-test: link a working interpreter of that version into DIR.
# Looks on PATH first (a pyenv shim for a version that is not active fails, so each candidate is run), then in
# pyenv's versions folder. A version that cannot be found is an error that says what to do.
# Usage: find_python.sh X.Y DIR
set -euo pipefail
version="$1"
dir="$2"
name="python$version"

candidates=()
if command -v "$name" >/dev/null 2>&1; then candidates+=("$(command -v "$name")"); fi
pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
for bin in "$pyenv_root"/versions/"$version".*/bin/"$name" /usr/bin/"$name" /usr/local/bin/"$name"; do
    [[ -x "$bin" ]] && candidates+=("$bin")
done

for bin in "${candidates[@]}"; do
    if [[ "$("$bin" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" == "$version" ]]; then
        real="$("$bin" -c 'import sys; print(sys.executable)')"
        mkdir -p "$dir"
        ln -sfn "$real" "$dir/$name"
        echo "find_python: $name -> $real"
        exit 0
    fi
done

echo "find_python: ERROR: no working $name (looked on PATH and in $pyenv_root/versions)." >&2
echo "find_python: install Python $version, or run sanity without host-Python checks: make sanity SANITY_HOST_PYTHONS=" >&2
exit 1
