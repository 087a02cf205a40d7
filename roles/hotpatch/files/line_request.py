"""Health probe run on the managed host: send one request line over TCP and match the answer line.

Argument: base64 of a JSON object {host, port, send, expect, expect_not, timeout, record_answer, retries, delay}.
Tries up to ``retries`` times (at least once), ``delay`` seconds apart, until the answer matches. Prints one JSON
object {ok, detail, answer, attempts} and exits 0 (the verdict is ``ok``: a failed check is an answer, not a task
failure, so Ansible shows the detail instead of an empty error); exits 2 on a malformed argument. The answer is
printed only when record_answer is true, so a leaked secret never reaches the controller's log.
Runs on Python >= 3.8, standard library only.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import sys
import time


def probe(spec: dict) -> dict:
    """Return {ok, detail, answer}; connection errors are a failed check, not an exception."""
    host = str(spec.get("host") or "127.0.0.1")
    port = int(spec["port"])
    timeout = float(spec.get("timeout") or 5)
    expect = str(spec.get("expect") or "")
    expect_not = str(spec.get("expect_not") or "")
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(str(spec["send"]).encode("utf-8") + b"\n")
            data = b""
            while b"\n" not in data and len(data) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        return {"ok": False, "detail": f"{host}:{port}: {exc.__class__.__name__}", "answer": None}
    if b"\n" not in data:
        return {"ok": False, "detail": f"{host}:{port} closed without an answer line", "answer": None}
    answer = data.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "replace")
    kept = answer if spec.get("record_answer") else None
    if expect_not and re.search(expect_not, answer):
        return {"ok": False, "detail": f"answer matches the forbidden pattern /{expect_not}/", "answer": kept}
    if expect and not re.search(expect, answer):
        return {"ok": False, "detail": f"answer does not match /{expect}/", "answer": kept}
    wanted = " and ".join(
        x for x in (f"matches /{expect}/" if expect else "", f"not /{expect_not}/" if expect_not else "") if x
    )
    return {"ok": True, "detail": "answer " + (wanted or "received"), "answer": kept}


def probe_until_ok(spec: dict) -> dict:
    """probe() up to spec["retries"] times (at least once), spec["delay"] seconds apart; adds "attempts"."""
    tries = max(1, int(spec.get("retries") or 1))
    delay = max(0.0, float(spec.get("delay") or 0))
    attempt = 1
    result = probe(spec)
    while not result["ok"] and attempt < tries:
        time.sleep(delay)  # the service may still be settling after the patch; no event to wait on over TCP
        attempt += 1
        result = probe(spec)
    result["attempts"] = attempt
    return result


def main(argv: list) -> int:
    try:
        spec = json.loads(base64.b64decode(argv[1]).decode("utf-8"))
        spec["port"] = int(spec["port"])
        spec["send"] = str(spec["send"])
    except (IndexError, ValueError, KeyError, TypeError) as exc:
        print(json.dumps({"ok": False, "detail": f"bad probe argument: {exc}", "answer": None, "attempts": 0}))
        return 2
    print(json.dumps(probe_until_ok(spec)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
