"""The rebootless.windows.engine role through ansible-playbook: a no-op where a runtime is configured, strict args.

Its Windows path (directory, ACL, embeddable Python) needs a Windows host, which this machine does not have; the
role is linted with the production profile instead (make ansible-lint).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"

pytestmark = pytest.mark.integration


def play(tmp_path: Path, host_vars: str, role_vars: str = "{}") -> subprocess.CompletedProcess[str]:
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(
        "all:\n  hosts:\n    wine1:\n"
        f"      ansible_connection: local\n      ansible_python_interpreter: {sys.executable}\n{host_vars}"
    )
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        "- hosts: all\n  gather_facts: false\n  tasks:\n"
        f"    - ansible.builtin.include_role:\n        name: rebootless.windows.engine\n      vars: {role_vars}\n"
    )
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=f"{ROOT / '.collections'}:{ROOT / '.cache' / 'collections'}",
        ANSIBLE_REMOTE_TMP=str(tmp_path / "remote"),
        ANSIBLE_LOCAL_TEMP=str(tmp_path / "local"),
        ANSIBLE_NOCOLOR="1",
    )
    return subprocess.run(
        [str(PLAYBOOK), "-i", str(inventory), str(playbook)], capture_output=True, text=True, env=env, check=False
    )


def test_engine_role_changes_nothing_on_a_wine_host(tmp_path: Path) -> None:
    done = play(tmp_path, "      hotpatch_platform: wine\n")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "changed=0" in done.stdout and "failed=0" in done.stdout


def test_engine_role_rejects_a_badly_typed_variable_before_any_task(tmp_path: Path) -> None:
    done = play(tmp_path, "      hotpatch_platform: wine\n", role_vars="{engine_acl: perhaps}")
    assert done.returncode != 0
    assert "engine_acl" in done.stdout and "Validating arguments against arg spec" in done.stdout
