"""The role's request probe (roles/hotpatch/files/line_request.py) against a real loopback line server."""

from __future__ import annotations

import base64
import json
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

PROBE = Path(__file__).resolve().parents[2] / "roles" / "hotpatch" / "files" / "line_request.py"


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    answers: list[str]


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.rfile.readline()
        server = self.server
        assert isinstance(server, _Server)
        answer = server.answers.pop(0) if len(server.answers) > 1 else server.answers[0]
        self.wfile.write(answer.encode() + b"\r\n")


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.answers = ["appcore 1.0.1"]
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def _run(spec: dict[str, object]) -> tuple[int, dict[str, object]]:
    arg = base64.b64encode(json.dumps(spec).encode()).decode()
    proc = subprocess.run([sys.executable, str(PROBE), arg], capture_output=True, text=True, check=False)
    return proc.returncode, json.loads(proc.stdout)


def test_a_mismatch_is_a_verdict_with_the_pattern_as_written_not_an_error(server: _Server) -> None:
    port = server.server_address[1]
    rc, verdict = _run({"port": port, "send": "VERSION", "expect": r"^appcore 1\.0\.2$", "retries": 3, "delay": 0})
    assert rc == 0
    assert verdict["ok"] is False
    assert verdict["attempts"] == 3
    # One backslash per escape, as the policy wrote it: no repr() doubling that JSON and Ansible double again.
    assert verdict["detail"] == r"answer does not match /^appcore 1\.0\.2$/"
    assert verdict["answer"] is None


def test_the_probe_retries_until_the_answer_matches(server: _Server) -> None:
    server.answers = ["appcore 1.0.1", "appcore 1.0.2"]
    port = server.server_address[1]
    rc, verdict = _run({"port": port, "send": "VERSION", "expect": r"^appcore 1\.0\.2$", "retries": 3, "delay": 0})
    assert (rc, verdict["ok"], verdict["attempts"]) == (0, True, 2)


def test_a_closed_port_fails_after_the_retries_with_the_reason(server: _Server) -> None:
    port = server.server_address[1]
    server.shutdown()
    server.server_close()
    rc, verdict = _run({"port": port, "send": "PING", "retries": 2, "delay": 0})
    assert (rc, verdict["ok"], verdict["attempts"]) == (0, False, 2)
    assert f"127.0.0.1:{port}: ConnectionRefusedError" == verdict["detail"]


def test_a_malformed_argument_exits_2() -> None:
    proc = subprocess.run([sys.executable, str(PROBE), "not-base64!"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["ok"] is False
