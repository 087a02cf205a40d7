#!/usr/bin/env bash
# ansible-test sanity on a real copy of the tree (CACHE/ansible_collections/rebootless/windows): the full suite
# on the controller Python, then compile + import of host code (plugins/modules, plugins/module_utils) on each
# host Python. Every pass runs even if an earlier one failed. Runs are serialised with a lock, because a second
# run would replace the copy under the first one's feet.
# Usage: sanity.sh VENV_BIN CACHE DEPS_ROOT CONTROLLER_PYTHON "HOST_PYTHONS" [ansible-test args...]
set -euo pipefail
bin="$1"
cache="$2"
deps="$3"
controller="$4"
read -r -a host_pythons <<<"$5"
shift 5

mkdir -p "$cache"
exec 9>"$cache/sanity.lock"
if ! flock --nonblock 9; then
    echo "sanity: another sanity run holds $cache/sanity.lock; waiting for it"
    flock 9
fi

"$bin/python" scripts/ci/seed_get_pip.py
"$bin/python" scripts/ci/copy_tree.py "$cache" "$deps"
tree="$cache/ansible_collections/rebootless/windows"
ansible_test=("$bin/ansible-test" sanity --venv --color no)

rc=0
echo "sanity: controller Python $controller, all tests"
(cd "$tree" && "${ansible_test[@]}" --python "$controller" "$@") || rc=1

host_code=()
for dir in plugins/modules/ plugins/module_utils/; do  # trailing / : ansible-test matches folders only so
    if [[ -d "$dir" ]]; then host_code+=("$dir"); fi
done
if ((${#host_code[@]} == 0)); then
    echo "sanity: no host code (plugins/modules, plugins/module_utils) yet: host-Python passes skipped"
    exit "$rc"
fi
for version in "${host_pythons[@]}"; do
    echo "sanity: host Python $version, compile + import of ${host_code[*]}"
    if ! scripts/ci/find_python.sh "$version" "$cache/pythons"; then
        rc=1
        continue
    fi
    (cd "$tree" && PATH="$cache/pythons:$PATH" "${ansible_test[@]}" --python "$version" \
        --test compile --test import "${host_code[@]}") || rc=1
done
exit "$rc"
