"""What an operator reads when a health check fails: every check type names what it checked and what it saw.

roles/hotpatch's post-health (tasks/verify.yml, through health.yml, check.yml and checks/TYPE.yml) and pre-health
(tasks/preflight.yml) run by ansible-playbook on localhost (a non-Windows host: the checks' POSIX branches) against
real things: commands, an HTTP server and a closed port on loopback, a log file with error lines. The request check's
message is tested on the demo fleet (test_rollout.py).
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.support.local_play import run_local_playbook

pytestmark = [pytest.mark.integration]

PLAYBOOK = """\
- hosts: localhost
  gather_facts: false
  vars:
    ansible_python_interpreter: {interpreter}
    hotpatch__platform: wine
    hotpatch__marks: []
    hotpatch__health: []
    hotpatch__log_offsets: {{}}
    hotpatch_check_retries: 0
    hotpatch_check_delay: 0
    hotpatch_check_timeout: 1
    hotpatch__checks_pre: {pre}
    hotpatch__checks_post: {post}
  tasks:
    - name: Post-health
      block:
        - name: Verify
          ansible.builtin.include_role:
            name: rebootless.windows.hotpatch
            tasks_from: verify
      rescue:
        - name: Say why
          ansible.builtin.debug:
            msg: "POST {{{{ ansible_failed_result.msg }}}}"
    - name: Pre-health
      block:
        - name: Preflight
          ansible.builtin.include_role:
            name: rebootless.windows.hotpatch
            tasks_from: preflight
      rescue:
        - name: Say why
          ansible.builtin.debug:
            msg: "PRE {{{{ ansible_failed_result.msg }}}}"
    - name: Show
      ansible.builtin.debug:
        msg: "HEALTH {{{{ hotpatch__health | to_json }}}}"
"""


class _Health(BaseHTTPRequestHandler):
    """/down answers 503; /health answers 200 with a body saying the service is degraded."""

    def do_GET(self) -> None:
        status, body = (503, b"maintenance") if self.path.startswith("/down") else (200, b'{"status": "degraded"}')
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture(scope="module")
def web() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    """A loopback port nothing listens on (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class FailedRun:
    """What the play printed: the post-health and pre-health failure messages, the health record, the output."""

    post: str
    pre: str
    health: list[dict[str, Any]]
    output: str
    web_port: int
    closed_port: int

    def post_reasons(self) -> list[str]:
        """One "NAME: DETAIL" per failed post-health check, in check order."""
        assert self.post.startswith("post-health failed: "), self.post
        return self.post[len("post-health failed: ") :].split("; ")


def _messages(stdout: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in stdout.splitlines():
        if not line.strip().startswith('"msg": "'):
            continue
        message = str(json.loads("{" + line.strip().rstrip(",") + "}")["msg"])
        for tag in ("POST", "PRE", "HEALTH"):
            if message.startswith(tag + " "):
                found[tag] = message[len(tag) + 1 :]
    return found


@pytest.fixture(scope="module")
def failed_run(web: int, tmp_path_factory: pytest.TempPathFactory) -> FailedRun:
    """One play: a failing check of every type after the patch, one failing check before it."""
    tmp_path = tmp_path_factory.mktemp("health-messages")
    log = tmp_path / "appsvc.log"
    log.write_text("service started\nERROR: fault in appcore.dll\nrequest served\nunhandled exception 0xc0000005\n")
    closed = _closed_port()
    post = [
        {"type": "command", "name": "self-test", "argv": [sys.executable, "-c", "raise SystemExit(3)"]},
        {"type": "command", "argv": [str(tmp_path / "no-such-tool"), "--quick"]},
        {"type": "command", "name": "lint", "argv": ["true"], "rc": 1},
        {"type": "http", "url": f"http://admin:s3cret@127.0.0.1:{web}/down?token=t0ken"},
        {"type": "http", "name": "health page", "url": f"http://127.0.0.1:{web}/health", "body": '"status":\\s*"ok"'},
        {"type": "http", "name": "nothing there", "url": f"http://127.0.0.1:{closed}/health"},
        {"type": "tcp", "port": closed},
        {"type": "eventlog", "name": "service log", "path": str(log)},
        {"type": "eventlog", "name": "bad pattern", "path": str(log), "pattern": "fault("},
    ]
    pre = [{"type": "tcp", "name": "port open", "port": closed}]
    book = tmp_path / "play.yml"
    book.write_text(PLAYBOOK.format(interpreter=sys.executable, pre=json.dumps(pre), post=json.dumps(post)))
    done = run_local_playbook(book, tmp_path)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    found = _messages(done.stdout)
    assert {"POST", "PRE", "HEALTH"} <= set(found), done.stdout[-4000:]
    return FailedRun(found["POST"], found["PRE"], json.loads(found["HEALTH"]), done.stdout + done.stderr, web, closed)


def test_a_failed_command_check_names_the_program_its_exit_code_and_the_expected_one(failed_run: FailedRun) -> None:
    reasons = failed_run.post_reasons()
    assert f"self-test: {sys.executable} exited 3, expected 0" in reasons
    assert "lint: true exited 0, expected 1" in reasons


def test_a_command_that_cannot_start_says_so_instead_of_an_exit_code(failed_run: FailedRun) -> None:
    [reason] = [r for r in failed_run.post_reasons() if "no-such-tool" in r.split(": ", 1)[1]]
    assert reason.endswith(
        "no-such-tool could not be started (no such file): check that it exists on the host and is executable"
    )


def test_a_failed_http_check_names_the_url_and_the_status_without_its_credentials(failed_run: FailedRun) -> None:
    reasons = failed_run.post_reasons()
    url = f"http://127.0.0.1:{failed_run.web_port}"
    assert f"http:{url}/down: GET {url}/down: HTTP 503, expected 200" in reasons
    assert f'health page: GET {url}/health: HTTP 200, but the body does not match /"status":\\s*"ok"/' in reasons
    closed = f"http://127.0.0.1:{failed_run.closed_port}/health"
    assert f"nothing there: GET {closed}: no answer ([Errno 111] Connection refused), expected HTTP 200" in reasons
    assert "s3cret" not in failed_run.output and "t0ken" not in failed_run.output
    assert "admin" not in failed_run.post + json.dumps(failed_run.health)


def test_a_failed_tcp_check_names_the_address_and_how_long_it_waited(failed_run: FailedRun) -> None:
    closed = failed_run.closed_port
    expected = f"tcp:{closed}: 127.0.0.1:{closed}: no connection accepted within 1 s (1 attempt(s))"
    assert expected in failed_run.post_reasons()


def test_a_failed_eventlog_check_names_the_file_the_pattern_and_the_count_never_the_lines(
    failed_run: FailedRun,
) -> None:
    reasons = failed_run.post_reasons()
    log = [r for r in reasons if r.startswith("service log: ")]
    assert log and log[0].startswith("service log: 2 new line(s) matching /(?i)error|fault|exception/ in ")
    assert log[0].endswith("appsvc.log since byte 0")
    assert "fault in appcore.dll" not in failed_run.post
    bad = [r for r in reasons if r.startswith("bad pattern: ")]
    assert bad and bad[0].startswith("bad pattern: pattern /fault(/ is not a valid regular expression (")
    assert bad[0].endswith("): fix the check's pattern")


def test_every_failed_check_is_in_the_message_and_in_the_record_with_the_same_detail(failed_run: FailedRun) -> None:
    post = [c for c in failed_run.health if c["phase"] == "post"]
    assert len(post) == 9 and not any(c["ok"] for c in post)
    assert failed_run.post_reasons() == [f"{c['name']}: {c['detail']}" for c in post]
    assert not any("Ansible" in c["detail"] or "Unknown error" in c["detail"] for c in post)


def test_a_failed_pre_health_check_says_what_it_saw_and_that_the_host_was_not_touched(failed_run: FailedRun) -> None:
    closed = failed_run.closed_port
    assert failed_run.pre == (
        f"pre-health failed: port open: 127.0.0.1:{closed}: no connection accepted within 1 s (1 attempt(s)). "
        "The host was not touched; fix it or drop the check from hotpatch_health_checks, then run again"
    )
