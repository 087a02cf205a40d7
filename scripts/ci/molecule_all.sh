#!/usr/bin/env bash
# Run `molecule test` for every scenario under extensions/molecule/ (default driver, no containers) and say how
# many ran. Usage: molecule_all.sh VENV_BIN
set -euo pipefail
bin="$1"
shopt -s nullglob
scenarios=(extensions/molecule/*/molecule.yml)
if ((${#scenarios[@]} == 0)); then
    echo "molecule: no scenarios under extensions/molecule/: 0 ran"
    if [[ -n "${CHECK_NOTES_DIR:-}" ]]; then
        mkdir -p "$CHECK_NOTES_DIR"
        echo "EMPTY: no scenarios under extensions/molecule/" >"$CHECK_NOTES_DIR/molecule"
    fi
    exit 0
fi

failed=()
for file in "${scenarios[@]}"; do
    scenario="$(basename "$(dirname "$file")")"
    echo "molecule: scenario $scenario"
    "$bin/molecule" test --scenario-name "$scenario" || failed+=("$scenario")
done
echo "molecule: ${#scenarios[@]} scenarios ran, ${#failed[@]} failed${failed:+: ${failed[*]}}"
((${#failed[@]} == 0))
