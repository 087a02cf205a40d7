"""hotpatch_workers and hotpatch_lock_timeout of roles/hotpatch, run by ansible-playbook on localhost.

The role runs with the demo package against this machine (no process loads appcore.dll, so the real engine plans,
applies and rolls back nothing) and a host "python" that keeps each engine request (tests/support/recording_python):
the test reads what the engine was asked. Out-of-range workers stop the role at its argument-spec validation.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from demo.main_job import build_demo_package
from tests.support.local_play import run_local_playbook
from tests.support.recording_python import engine_calls, recording_python

pytestmark = [pytest.mark.integration]

PLAYBOOK = """\
- hosts: localhost
  gather_facts: false
  vars:
    ansible_python_interpreter: {interpreter}
    hotpatch_package: {package}
    hotpatch_allow_unsigned: true
    hotpatch_platform: wine
    hotpatch_python: {python}
    hotpatch_engine_dir: {root}/engine
    hotpatch_engine_state_dir: {root}/state
    hotpatch_marker_dir: {root}/markers
{role_vars}
  tasks:
    - name: The whole role (facts, plan, decision)
      ansible.builtin.include_role:
        name: rebootless.windows.hotpatch
    - name: Apply, as the role does after a hotpatch decision
      ansible.builtin.include_role:
        name: rebootless.windows.hotpatch
        tasks_from: apply
    - name: Roll back, as the role does when post-health fails
      ansible.builtin.include_role:
        name: rebootless.windows.hotpatch
        tasks_from: rollback
    - name: Show
      ansible.builtin.debug:
        msg: "RESULT {{{{ hotpatch_record.result }}}}"
"""

BAD_WORKERS = """\
- hosts: localhost
  gather_facts: false
  vars:
    ansible_python_interpreter: {interpreter}
  tasks:
{tasks}
"""

BAD_WORKERS_TASK = """\
    - name: Workers {value}
      block:
        - name: Run the role
          ansible.builtin.include_role:
            name: rebootless.windows.hotpatch
          vars:
            hotpatch_package: unused.hpk
            hotpatch_workers: {value}
      rescue:
        - name: Say why
          ansible.builtin.debug:
            msg: "REFUSED {value}: {{{{ ansible_failed_result.msg }}}}"
"""


def test_the_role_hands_its_workers_and_lock_timeout_to_every_engine_run_that_takes_them(tmp_path: Path) -> None:
    package = build_demo_package(tmp_path / "packages").path
    python, log = recording_python(tmp_path / "host")
    (tmp_path / "engine").mkdir()
    book = tmp_path / "play.yml"
    role_vars = "    hotpatch_workers: 3\n    hotpatch_lock_timeout: 7\n"
    book.write_text(
        PLAYBOOK.format(interpreter=sys.executable, package=package, python=python, root=tmp_path, role_vars=role_vars)
    )
    done = run_local_playbook(book, tmp_path)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    calls = [c for c in engine_calls(log) if c.verb in ("plan", "apply", "rollback")]
    assert [c.verb for c in calls] == ["plan", "apply", "rollback"], calls
    assert [c.request["workers"] for c in calls] == [3, 3, 3]
    # The plan takes no lock; apply and rollback wait at most hotpatch_lock_timeout for another engine run.
    assert [c.request["lock_timeout_s"] for c in calls if c.verb != "plan"] == [7, 7]


def test_without_the_variables_the_engine_gets_the_module_defaults(tmp_path: Path) -> None:
    package = build_demo_package(tmp_path / "packages").path
    python, log = recording_python(tmp_path / "host")
    (tmp_path / "engine").mkdir()
    book = tmp_path / "play.yml"
    book.write_text(
        PLAYBOOK.format(interpreter=sys.executable, package=package, python=python, root=tmp_path, role_vars="")
    )
    done = run_local_playbook(book, tmp_path)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    calls = [c for c in engine_calls(log) if c.verb in ("plan", "apply", "rollback")]
    assert [(c.verb, c.request["workers"], c.request["lock_timeout_s"]) for c in calls] == [
        ("plan", 8, 30),
        ("apply", 8, 30),
        ("rollback", 8, 30),
    ]


def test_workers_outside_1_to_64_stop_the_role_before_any_task(tmp_path: Path) -> None:
    book = tmp_path / "play.yml"
    tasks = "".join(BAD_WORKERS_TASK.format(value=v) for v in (0, 65, 64))
    book.write_text(BAD_WORKERS.format(interpreter=sys.executable, tasks=tasks))
    done = run_local_playbook(book, tmp_path)
    refused = {}
    for line in done.stdout.splitlines():
        if '"msg": "REFUSED ' in line:
            message = json.loads("{" + line.strip().rstrip(",") + "}")["msg"]
            value, _sep, why = message[len("REFUSED ") :].partition(": ")
            refused[int(value)] = why
    assert set(refused) == {0, 65}, done.stdout[-4000:]
    for value in (0, 65):
        assert "hotpatch_workers" in refused[value] and "must be one of" in refused[value], refused[value]
        assert f"got: {value}" in refused[value], refused[value]
    # Neither refused run reached a task; 64 passed validation and the role ran (recording its own failure).
    assert done.stdout.count("TASK [rebootless.windows.hotpatch : Facts | start the record]") == 1
