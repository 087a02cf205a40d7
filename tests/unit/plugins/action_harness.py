"""Test harness for the engine action plugins: a stub engine zipapp, packages, tasks and a strict fake connection.

The stub engine is a real zipapp built with ``_engine_runner.build_engine`` whose ``hotpatch.__main__.main()``
answers the protocol (docs/engine-protocol.md): it appends ``{"verb", "request"}`` to ``$STUB_ENGINE_LOG`` and
prints the document in ``$STUB_ENGINE_REPLY`` (default: a successful reply for the verb), exiting with
``$STUB_ENGINE_RC``. It only stands in for the engine, which lands separately; integration tests use the real one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ansible.parsing.dataloader import DataLoader
from ansible.playbook.play_context import PlayContext
from ansible.plugins.loader import shell_loader
from ansible.template import Templar

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.package import (
    ImagePin,
    Manifest,
    write_package,
)
from ansible_collections.rebootless.windows.plugins.plugin_utils._engine_runner import EngineArchive, build_engine

STUB_MAIN = b"""\
import json, os, sys


def main():
    verb, request_path = sys.argv[1], sys.argv[3]
    with open(request_path, encoding="utf-8") as handle:
        request = json.load(handle)
    log = os.environ.get("STUB_ENGINE_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"verb": verb, "request": request, "argv0": sys.argv[0]}) + "\\n")
    reply = os.environ.get("STUB_ENGINE_REPLY")
    document = json.loads(reply) if reply else {"verb": verb, "ok": True, "changed": verb in ("apply", "rollback"),
                                                "engine_version": "0.0.0-stub", "platform": "wine",
                                                "processes": [], "reasons": []}
    print(json.dumps(document))
    return int(os.environ.get("STUB_ENGINE_RC", "0"))
"""


def stub_engine(directory: Path) -> EngineArchive:
    """Build the stub engine zipapp into ``directory``; same layout as the real one (root ``__main__.py``)."""
    from ansible_collections.rebootless.windows.plugins.plugin_utils._engine_runner import ROOT_MAIN

    payload = build_engine({"__main__.py": ROOT_MAIN, "hotpatch/__init__.py": b"", "hotpatch/__main__.py": STUB_MAIN})
    digest = hashlib.sha256(payload).hexdigest()
    path = directory / f"engine-{digest[:12]}.pyz"
    path.write_bytes(payload)
    return EngineArchive(str(path), digest)


def make_package(path: Path, package_id: str = "appcore-fix", module: bytes = b"MZ patched module") -> str:
    """Write a small valid cold-only package to ``path``; returns its SHA-256."""
    pin = ImagePin(
        name="appcore.dll",
        machine=0x8664,
        time_date_stamp=1,
        size_of_image=0x1000,
        checksum=0,
        sha256="0" * 64,
        image_base=0x180000000,
    )
    member = "module/appcore.dll"
    manifest = Manifest(
        package_id=package_id,
        version="2.0.0",
        module="appcore.dll",
        base=pin,
        patched=pin,
        patched_member=member,
        hotpatchable=False,
        members={member: hashlib.sha256(module).hexdigest()},
    )
    return write_package(str(path), manifest, {member: module})


def sign(path: Path) -> str:
    """Sign the package at ``path`` in place with a new Ed25519 key; returns the public key (base64) to trust."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ansible_collections.rebootless.windows.plugins.plugin_utils._signing import public_key_text, sign_package

    key = Ed25519PrivateKey.generate()
    path.write_bytes(sign_package(path.read_bytes(), key))
    return public_key_text(key)


class FakeTask:
    """The parts of ansible.playbook.task.Task the action base reads."""

    def __init__(self, args: dict[str, Any], check_mode: bool = False, diff: bool = False, basedir: str = ".") -> None:
        self.args = args
        self.check_mode = check_mode
        self.diff = diff
        self.async_val = 0
        self.action = "rebootless.windows.win_hotpatch"
        self._basedir = basedir

    def get_search_path(self) -> list[str]:
        return [self._basedir]


@dataclass
class Sent:
    """One thing the action sent: ``kind`` "exec" (``command``, ``script`` decoded for PowerShell) or "put"."""

    kind: str
    command: str = ""
    script: str | None = None
    source: str = ""
    dest: str = ""
    in_data: bytes | None = None
    data: bytes = b""  # content of a put file, read when it was sent


def decode_powershell(command: str) -> str | None:
    """The script of a ``PowerShell ... -EncodedCommand <base64>`` command line, else None."""
    match = re.search(r"-EncodedCommand (\S+)$", command)
    return base64.b64decode(match.group(1)).decode("utf-16-le") if match else None


@dataclass
class StrictConnection:
    """Records every command and transfer; answers only what ``responder`` knows, raising on anything else.

    ``responder(sent)`` returns ``(rc, stdout, stderr)`` or raises AssertionError for an unexpected command.
    """

    shell_name: str
    responder: Callable[[Sent], tuple[int, str, str]]
    remote_tmp: str
    sent: list[Sent] = field(default_factory=list)
    transport: str = "fake"
    become: Any = None
    allow_executable: bool = False  # record exactly the command the plugin built

    def __post_init__(self) -> None:
        self._shell = shell_loader.get(self.shell_name)
        self._shell.set_options(direct={"remote_tmp": self.remote_tmp})

    def exec_command(self, cmd: str, in_data: bytes | None = None, sudoable: bool = True) -> tuple[int, bytes, bytes]:
        sent = Sent("exec", command=cmd, script=decode_powershell(cmd), in_data=in_data)
        self.sent.append(sent)
        rc, out, err = self.responder(sent)
        return rc, out.encode(), err.encode()

    def put_file(self, in_path: str, out_path: str) -> None:
        self.sent.append(Sent("put", source=in_path, dest=out_path, data=Path(in_path).read_bytes()))


def make_action(plugin: type[Any], connection: Any, task: FakeTask, play_context: PlayContext | None = None) -> Any:
    """An action plugin instance wired to ``connection`` (real DataLoader and Templar)."""
    loader = DataLoader()
    action = plugin(task, connection, play_context or PlayContext(), loader, Templar(loader=loader), None)
    action._load_name = task.action
    return action


def reply(verb: str, **fields: Any) -> str:
    """A protocol result document as JSON text."""
    document: dict[str, Any] = {
        "verb": verb,
        "ok": True,
        "changed": False,
        "engine_version": "0.1.0",
        "platform": "windows",
        "processes": [],
        "reasons": [],
        "cold_patch_required": False,
        "journal": None,
        "staged": [],
    }
    document.update(fields)
    return json.dumps(document)
