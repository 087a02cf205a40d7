"""kb_install takes the host-wide lock of apply/rollback: two real engine processes on one state directory.
The role's hotpatch_lock_timeout reaches kb_install's request through win_hotpatch_kb (lock_timeout) in a real play.

The KB engine runs in its own process through ``run_kb_file`` (the engine's command-line entry of the KB
verbs); only what cannot run here is a stand-in: the registry (HKLM) and the OS's tools. The other engine is
``python -m hotpatch`` (a changing verb) or a process holding ``HostLock`` the way the engine does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.local_play import run_local_playbook
from tests.support.recording_python import engine_calls, recording_python

ENGINE_ROOT = Path(__file__).resolve().parents[2] / "plugins" / "module_utils"

# A KB engine process. Its registry either parks the run at the first facts read (the lock is held: "reading"
# on stdout, then wait for a line on stdin) or refuses every read; its runner refuses every command. Whatever
# happens, the process prints the verb's result document as its last line and exits with the verb's code.
_KB_ENGINE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from hotpatch.osupdate.cli import run_kb_file
from hotpatch.osupdate.kb import KbTools
from hotpatch.osupdate.registry import Registry, RegistryError
from hotpatch.osupdate.runner import Runner

PARK = sys.argv[3] == "park"
touched = []

class HostRegistry(Registry):
    def value(self, path, name):
        touched.append(path + "\\\\" + name)
        if PARK and len(touched) == 1:
            print("reading", flush=True)
            sys.stdin.readline()
        raise RegistryError("stand-in registry: read refused")

    def key_exists(self, path):
        return self.value(path, "") is not None

class NoTools(Runner):
    def run(self, argv, timeout_s):
        touched.append(" ".join(argv))
        raise OSError("stand-in runner: no command may run")

code, result = run_kb_file(sys.argv[4], sys.argv[2], KbTools(HostRegistry(), NoTools()))
result["touched"] = touched
print(json.dumps(result), flush=True)
sys.exit(code)
"""

_HOLDER = """
import os, sys
sys.path.insert(0, sys.argv[1])
from hotpatch.host.lock import HostLock
with HostLock(sys.argv[2], 5):
    print("locked", flush=True)
    sys.stdin.readline()
"""

pytestmark = pytest.mark.integration


def _request(tmp_path: Path, name: str, doc: dict[str, object]) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def _kb_engine(request: Path, mode: str, verb: str = "kb_install") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _KB_ENGINE, str(ENGINE_ROOT), str(request), mode, verb],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str]) -> tuple[int, dict]:
    out, err = proc.communicate("\n", timeout=60)
    assert out.strip(), err
    return proc.returncode, json.loads(out.strip().splitlines()[-1])


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def holder(state_dir: Path) -> Iterator[subprocess.Popen[str]]:
    """Another engine holding the host lock until its stdin closes."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(ENGINE_ROOT), str(state_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    yield proc
    if proc.poll() is None:
        proc.communicate("")


def test_kb_install_gives_up_on_a_held_lock_naming_its_holder_and_touching_nothing(
    tmp_path: Path, state_dir: Path, holder: subprocess.Popen[str]
) -> None:
    request = _request(tmp_path, "kb.json", {"path": "C:\\kb.msu", "state_dir": str(state_dir), "lock_timeout_s": 0.2})
    code, result = _finish(_kb_engine(request, "refuse"))
    assert (code, result["ok"], result["changed"], result["error"]["kind"]) == (6, False, False, "lock")
    assert f"(pid {holder.pid})" in result["error"]["message"]
    assert "lock_timeout_s" in result["error"]["message"]
    assert result["touched"] == []  # no registry read, no command: the host was left alone


def test_kb_install_waits_for_the_holder_then_runs(
    tmp_path: Path, state_dir: Path, holder: subprocess.Popen[str]
) -> None:
    request = _request(tmp_path, "kb.json", {"path": "C:\\kb.msu", "state_dir": str(state_dir), "lock_timeout_s": 60})
    kb = _kb_engine(request, "refuse")
    holder.communicate("")  # the other engine finishes while the KB engine waits
    code, result = _finish(kb)
    # It got the lock and started: the first facts read is refused by the stand-in registry (exit 7), not the lock.
    assert (code, result["error"]["kind"]) == (7, "backend")
    assert result["touched"]


def test_kb_classify_changes_nothing_and_does_not_wait_for_the_lock(
    tmp_path: Path, state_dir: Path, holder: subprocess.Popen[str]
) -> None:
    request = _request(tmp_path, "kb.json", {"path": "C:\\kb.msu", "state_dir": str(state_dir), "lock_timeout_s": 0})
    code, result = _finish(_kb_engine(request, "refuse", "kb_classify"))
    assert result["error"]["kind"] == "backend" and code == 7  # it ran (and met the stand-in registry)


def test_an_engine_run_gives_up_while_a_kb_install_holds_the_lock(tmp_path: Path, state_dir: Path) -> None:
    kb = _kb_engine(_request(tmp_path, "kb.json", {"path": "C:\\kb.msu", "state_dir": str(state_dir)}), "park")
    try:
        assert kb.stdout is not None and kb.stdout.readline().strip() == "reading"
        recover = _request(tmp_path, "recover.json", {"state_dir": str(state_dir), "lock_timeout_s": 0.2})
        done = subprocess.run(
            [sys.executable, "-m", "hotpatch", "recover", "--request", str(recover)],
            cwd=ENGINE_ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        result = json.loads(done.stdout)
        assert (done.returncode, result["error"]["kind"]) == (6, "lock")
        assert f"(pid {kb.pid})" in result["error"]["message"]
    finally:
        code, _unused = _finish(kb)
    assert code == 7  # released after its (refused) facts read


# The role's KB phase on a host it takes for Windows (hotpatch__platform), with a host "python" that keeps the
# engine's request. On this Linux machine the real engine then refuses to install (not Windows, exit 7) - after
# the request was written, which is what the test reads.
_ROLE_KB_PLAY = """\
- hosts: localhost
  gather_facts: false
  vars:
    ansible_python_interpreter: {interpreter}
    hotpatch__platform: windows
    hotpatch__marks: []
    hotpatch__reasons: []
    hotpatch__changed: false
    hotpatch_package: unused.hpk
    hotpatch_kb: 'C:\\\\kb.msu'
    hotpatch_python: {python}
    hotpatch_engine_dir: {root}/engine
    hotpatch_engine_state_dir: {root}/state
    hotpatch_lock_timeout: 1
  tasks:
    - name: KB phase
      block:
        - name: Run the phase
          ansible.builtin.include_role:
            name: rebootless.windows.hotpatch
            tasks_from: kb
      rescue:
        - name: Say why
          ansible.builtin.debug:
            msg: "KB FAILED {{{{ ansible_failed_result.msg }}}}"
    - name: A lock_timeout out of range
      rebootless.windows.win_hotpatch_kb:
        path: 'C:\\\\kb.msu'
        lock_timeout: -1
        python: {python}
      ignore_errors: true
      register: bad
    - name: Show
      ansible.builtin.debug:
        msg: "BAD {{{{ bad.msg }}}}"
"""


def test_the_role_s_lock_timeout_reaches_kb_install_and_bounds_its_wait_for_another_engine(
    tmp_path: Path, state_dir: Path, holder: subprocess.Popen[str]
) -> None:
    python, log = recording_python(tmp_path / "host")
    (tmp_path / "engine").mkdir()
    book = tmp_path / "play.yml"
    book.write_text(_ROLE_KB_PLAY.format(interpreter=sys.executable, python=python, root=tmp_path))
    done = run_local_playbook(book, tmp_path)
    out = done.stdout + done.stderr
    assert "need a Windows host" in out, out[-4000:]
    assert "lock_timeout must be from 0 to 86400 seconds, got -1; nothing was sent to the host" in out, out[-4000:]
    [call] = [c for c in engine_calls(log) if c.verb == "kb_install"]  # the bad one never reached the host
    assert (call.request["lock_timeout_s"], call.request["state_dir"]) == (1, str(state_dir))

    # The very request the role sent, run by a KB engine while another engine holds the lock: it waits its
    # second, gives up naming the holder and the timeout, and touches nothing.
    request = _request(tmp_path, "from-role.json", call.request)
    code, result = _finish(_kb_engine(request, "refuse"))
    assert (code, result["error"]["kind"], result["changed"]) == (6, "lock", False)
    assert "for more than 1 s" in result["error"]["message"] and f"(pid {holder.pid})" in result["error"]["message"]
    assert result["touched"] == []
