#!/usr/bin/env bash
# Install the Debian packages that CI and the demo fleet need, only when some are missing.
# The list is bindep.txt's entries with the "test" profile. Needs root to install; says so loudly otherwise.
set -euo pipefail

bindep_file="${1:-bindep.txt}"
# Keep entries whose [profiles] hold both "test" and "platform:dpkg".
mapfile -t wanted < <(awk '
    /^[[:space:]]*(#|$)/ { next }
    match($0, /\[[^]]*\]/) {
        n = split(substr($0, RSTART + 1, RLENGTH - 2), p, /[[:space:]]+/); t = 0; d = 0
        for (i = 1; i <= n; i++) { if (p[i] == "test") t = 1; if (p[i] == "platform:dpkg") d = 1 }
        if (t && d) print $1
    }' "$bindep_file")
if ((${#wanted[@]} == 0)); then
    echo "apt_deps: no [test platform:dpkg] entries in $bindep_file" >&2
    exit 1
fi

# A Debian python3 (not pyenv's) needs python3-venv for `make venv`.
python="${SYSTEM_PYTHON:-python3}"
if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
    wanted+=(python3-venv)
fi

missing=()
for pkg in "${wanted[@]}"; do
    status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
    [[ "$status" == installed ]] || missing+=("$pkg")
done

if ((${#missing[@]} == 0)); then
    echo "apt_deps: all ${#wanted[@]} packages present: ${wanted[*]}"
    exit 0
fi

if [[ "$(id -u)" != 0 ]]; then
    echo "apt_deps: ERROR: missing Debian packages: ${missing[*]}" >&2
    echo "apt_deps: run 'make deps' as root, or: sudo apt-get install --no-install-recommends ${missing[*]}" >&2
    exit 1
fi

echo "apt_deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
