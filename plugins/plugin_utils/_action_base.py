# Internal to rebootless.windows: not a public API, may change without notice.
"""One controller-side base for every action plugin that runs the host engine.

A subclass declares its argument spec and fills three hooks:

``verb(params)``
    The engine verb to run (docs/engine-protocol.md), e.g. ``apply``, or ``plan`` in check mode.
``request(params)``
    The verb-specific keys of the request document (the base adds ``package`` and ``state_dir``).
``shape(params, reply)``
    The Ansible result built from the engine's JSON document (an ``EngineReply``).

and optionally ``package_source(params)`` (which package to ship) and ``is_failure(reply)``.

The base does everything else, the same way for every plugin: validate the task arguments on the controller
before anything is sent, verify a controller-side package with ``read_package``, build the engine zipapp, ask
the host in ONE command for the SHA-256 of what it already caches, transfer only what is missing, run the verb
with a request file, parse the single JSON document, map the exit code to a failure carrying the engine's own
message, and remove its temporary files. Commands are built per shell family by ``HostCommands``: PowerShell
(the ``powershell`` and ``cmd`` shell plugins, as a ``-EncodedCommand`` script) and POSIX ``sh``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.errors import PackageError
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.package import read_package
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.signature import verify_manifest
from ansible_collections.rebootless.windows.plugins.plugin_utils._engine_runner import EngineArchive, engine_archive

__all__ = [
    "CHANGING_VERBS",
    "EXIT_KINDS",
    "EngineAction",
    "EngineReply",
    "HostCommands",
    "PackageInfo",
    "PosixCommands",
    "PowerShellCommands",
    "Upload",
    "host_commands",
]

# Verbs that change the host: they need the persistent engine directory (with its restricted ACL on Windows).
CHANGING_VERBS = frozenset({"apply", "rollback", "stage", "unstage", "recover", "kb_install"})

# Engine exit codes (errors.py) -> what failed as a whole.
EXIT_KINDS = {
    0: "ok",
    1: "processes",
    2: "request",
    3: "package",
    4: "signature",
    5: "image",
    6: "lock",
    7: "backend",
    8: "journal",
}

WINDOWS_ENGINE_DIR = "C:\\ProgramData\\rebootless"
POSIX_ENGINE_DIR = "/var/lib/rebootless"
DEFAULT_POSIX_PYTHON = "/usr/bin/python3"

# Lines the probe prints: "dir:ok|created|missing", "python:ok|missing", then one SHA-256 (or "-") per path.
_PROBE_POSIX = """\
import hashlib, os, sys
root, create, paths = sys.argv[1], sys.argv[2] == "1", sys.argv[3:]
state = "ok" if os.path.isdir(root) else "missing"
if create:
    if state == "missing":
        state = "created"
    os.makedirs(os.path.join(root, "packages"), mode=0o700, exist_ok=True)
print("dir:" + state)
print("python:ok")
for path in paths:
    try:
        with open(path, "rb") as handle:
            digest = hashlib.sha256()
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        print(digest.hexdigest())
    except OSError:
        print("-")
"""


@dataclass(frozen=True)
class PackageInfo:
    """What the controller learnt from a package that passed ``read_package`` (all hex digests lowercase)."""

    id: str
    module: str
    version: str
    sha256: str
    hotpatchable: bool
    path: str = ""  # where the controller read it

    def as_result(self) -> dict[str, Any]:
        """The ``package`` return value: ``{id, module, version, sha256}``."""
        return {"id": self.id, "module": self.module, "version": self.version, "sha256": self.sha256}


@dataclass(frozen=True)
class Upload:
    """A controller file the host needs; ``cache_path`` is where the host keeps it, named by content."""

    local_path: str
    sha256: str
    cache_path: str


@dataclass(frozen=True)
class EngineReply:
    """The engine's answer: exit code ``rc``, the parsed JSON ``document``, ``stderr`` text, the ``verb`` run."""

    verb: str
    rc: int
    document: dict[str, Any]
    stderr: str = ""

    @property
    def error(self) -> dict[str, Any] | None:
        """``{"kind", "message"}`` when the verb failed as a whole (exit code >= 2), else None."""
        value = self.document.get("error")
        return value if isinstance(value, dict) else None

    @property
    def processes(self) -> list[dict[str, Any]]:
        """Per-process results as the engine reported them (dicts of the protocol's process record)."""
        value = self.document.get("processes")
        return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []

    @property
    def reasons(self) -> list[str]:
        """Human-readable reasons, one per refusal or failure."""
        value = self.document.get("reasons")
        return [str(item) for item in value] if isinstance(value, list) else []


@dataclass
class _Transfer:
    """Bookkeeping for one run: where each upload is read from on the host, and which to install first."""

    paths: dict[str, str] = field(default_factory=dict)  # local path -> path the engine uses on the host
    installs: list[tuple[str, str]] = field(default_factory=list)  # (path in remote tmp, cache path)
    sent: list[str] = field(default_factory=list)  # cache paths transferred this run
    transferred: list[str] = field(default_factory=list)  # paths in the remote tmp dir written this run


class HostCommands:
    """Builds the exact command strings the host runs; one subclass per shell family, no quoting elsewhere."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell

    def join(self, *parts: str) -> str:
        """A host path from parts, with the host's separator."""
        return str(self.shell.join_path(*parts))

    def probe(self, python: str, engine_dir: str, create: bool, paths: Sequence[str]) -> str:
        """One cheap command: state of ``engine_dir`` (created when ``create``), Python presence, SHA-256 per path."""
        raise NotImplementedError

    def run(self, python: str, engine: str, verb: str, request: str, installs: Sequence[tuple[str, str]]) -> str:
        """Install each ``(tmp path, cache path)`` (copy beside, then rename), then run the engine verb."""
        raise NotImplementedError


class PowerShellCommands(HostCommands):
    """Windows hosts (``powershell`` and ``cmd`` shell plugins): a script sent as ``PowerShell -EncodedCommand``.

    The script carries every value as a PowerShell single-quoted literal (``_escape`` doubles the quote
    characters PowerShell recognises), so no value is ever parsed as code. The outer command line holds only
    base64 and fixed switches: cmd.exe and the WinRM/PSRP/SSH transports pass it through unchanged (each token
    still goes through the shell plugin's ``quote``, a no-op on such tokens, so that stays true by construction).
    """

    def literal(self, value: str) -> str:
        """``value`` as a PowerShell single-quoted string literal."""
        return "'" + str(self.shell._escape(value)) + "'"

    def encode(self, script: str) -> str:
        parts = self.shell._encode_script(script, as_list=True, preserve_rc=False)
        return " ".join(self.shell.quote(part) for part in parts)

    def probe(self, python: str, engine_dir: str, create: bool, paths: Sequence[str]) -> str:
        found = "'dir:ok'"
        if create:
            found = "[void](New-Item -ItemType Directory -Force -Path (Join-Path -Path $dir -ChildPath 'packages')); 'dir:ok'"
        script = "\n".join(
            [
                f"$dir = {self.literal(engine_dir)}",
                f"if (Test-Path -LiteralPath $dir -PathType Container) {{ {found} }} else {{ 'dir:missing' }}",
                f"if (Test-Path -LiteralPath {self.literal(python)} -PathType Leaf) {{ 'python:ok' }} else {{ 'python:missing' }}",
                f"foreach ($path in @({', '.join(self.literal(path) for path in paths)})) {{",
                "if (Test-Path -LiteralPath $path -PathType Leaf) {"
                " (Get-FileHash -LiteralPath $path -Algorithm SHA256).Hash.ToLowerInvariant() } else { '-' }",
                "}",
            ]
        )
        return self.encode(script)

    def run(self, python: str, engine: str, verb: str, request: str, installs: Sequence[tuple[str, str]]) -> str:
        lines = []
        if installs:
            # Copy (not move) so the file inherits the engine directory's ACL, then rename it into place so no
            # reader sees a partial file. A function keeps each path once: the encoded command must stay under
            # cmd.exe's 8191 characters even with long paths.
            lines += [
                "function Install-Cached([string]$Source, [string]$Target) {",
                "Copy-Item -LiteralPath $Source -Destination ($Target + '.part') -Force -ErrorAction Stop",
                "Move-Item -LiteralPath ($Target + '.part') -Destination $Target -Force -ErrorAction Stop",
                "}",
            ]
            lines += [f"Install-Cached {self.literal(source)} {self.literal(target)}" for source, target in installs]
        args = " ".join(self.literal(value) for value in (python, engine, verb, "--request", request))
        lines += ["$env:PYTHONIOENCODING = 'utf-8'", f"& {args}", "exit $LASTEXITCODE"]
        return self.encode("\n".join(lines))


class PosixCommands(HostCommands):
    """POSIX ``sh`` (local, ssh): argv words quoted with the shell plugin's ``quote``, joined with ``&&``."""

    def words(self, *argv: str) -> str:
        return " ".join(self.shell.quote(word) for word in argv)

    def probe(self, python: str, engine_dir: str, create: bool, paths: Sequence[str]) -> str:
        return self.words(python, "-c", _PROBE_POSIX, engine_dir, "1" if create else "0", *paths)

    def run(self, python: str, engine: str, verb: str, request: str, installs: Sequence[tuple[str, str]]) -> str:
        steps = []
        for source, target in installs:
            part = target + ".part." + os.path.basename(os.path.dirname(source))  # unique per task: the tmp dir
            steps.append(self.words("cp", "--", source, part))
            steps.append(self.words("mv", "-f", "--", part, target))
        steps.append("PYTHONIOENCODING=utf-8 " + self.words(python, engine, verb, "--request", request))
        return f" {self.shell._SHELL_AND} ".join(steps)


def host_commands(shell: Any) -> HostCommands:
    """The command builder for a connection's shell plugin (Windows family or POSIX)."""
    if getattr(shell, "_IS_WINDOWS", False):
        return PowerShellCommands(shell)
    return PosixCommands(shell)


def parse_document(stdout: str) -> dict[str, Any] | None:
    """The engine's single JSON object from ``stdout``; tolerates transport noise around it (last line wins)."""
    text = stdout.strip()
    candidates = [text] + [line.strip() for line in reversed(text.splitlines()) if line.strip().startswith("{")]
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


class EngineAction(ActionBase):
    """Base of the engine-backed action plugins. Subclasses set ``ARGUMENT_SPEC`` and fill the hooks."""

    ARGUMENT_SPEC: ClassVar[dict[str, Any]] = {}
    MUTUALLY_EXCLUSIVE: ClassVar[list[list[str]]] = []
    REQUIRED_IF: ClassVar[list[Any]] = []
    TRANSFERS_FILES = False  # the base makes its tmp dir itself, after the arguments passed validation
    _supports_check_mode = True
    _supports_async = False

    # -- hooks ----------------------------------------------------------------------------------------------

    def verb(self, params: dict[str, Any]) -> str:
        """Engine verb for these validated arguments (check mode is ``self._task.check_mode``)."""
        raise NotImplementedError

    def request(self, params: dict[str, Any]) -> dict[str, Any]:
        """Verb-specific request keys; ``package`` and ``state_dir`` are added by the base."""
        return {}

    def package_source(self, params: dict[str, Any]) -> tuple[str, bool] | None:
        """``(path, remote)`` of the package to use, or None when the verb needs none."""
        return None

    def argument_problems(self, params: dict[str, Any]) -> list[str]:
        """What the argument spec cannot express (ranges, ...): one message per problem, checked before sending."""
        return []

    def is_failure(self, reply: EngineReply) -> bool:
        """Whether the task fails; default: any non-zero exit code."""
        return reply.rc != 0

    def shape(self, params: dict[str, Any], reply: EngineReply, package: PackageInfo | None) -> dict[str, Any]:
        """The Ansible result (without ``failed``/``msg``, which the base sets from the exit code)."""
        raise NotImplementedError

    # -- flow -------------------------------------------------------------------------------------------------

    def run(self, tmp: str | None = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        _validation, params = self.validate_argument_spec(
            argument_spec=self.ARGUMENT_SPEC,
            mutually_exclusive=self.MUTUALLY_EXCLUSIVE,
            required_if=self.REQUIRED_IF,
        )
        problems = self.argument_problems(params)
        if problems:
            raise AnsibleActionFail("; ".join(problems) + "; nothing was sent to the host")
        source = self.package_source(params)
        package = self.check_package(source[0], params) if source and not source[1] else None
        try:
            reply = self.run_engine(params, task_vars, source, package)
            result.update(self.shape(params, reply, package))
            result["engine_rc"] = reply.rc
            if self.is_failure(reply):
                result["failed"] = True
                result["msg"] = self.failure_message(reply)
        finally:
            if self._connection._shell.tmpdir is not None:
                self.cleanup()
        return result

    def check_package(self, path: str, params: Mapping[str, Any]) -> PackageInfo:
        """Verify a controller-side package before anything is sent; raises AnsibleActionFail saying why.

        Structure and member hashes always (``read_package``); the signature too when the module takes
        ``trusted_keys`` / ``allow_unsigned``, with the engine's own rules (``verify_manifest``).
        """
        try:
            found = self._find_needle("files", path)
        except Exception as exc:
            raise AnsibleActionFail(f"package {path} not found on the controller ({exc}); nothing was sent") from None
        try:
            checked = read_package(found)
            if "trusted_keys" in self.ARGUMENT_SPEC:
                verify_manifest(
                    checked.manifest_bytes,
                    checked.signature,
                    list(params.get("trusted_keys") or []),
                    bool(params.get("allow_unsigned")),
                )
        except PackageError as exc:  # SignatureError is one too
            raise AnsibleActionFail(
                f"package {found} rejected on the controller: {exc}; nothing was sent to the host"
            ) from None
        manifest = checked.manifest
        return PackageInfo(
            manifest.package_id, manifest.module, manifest.version, checked.sha256, manifest.hotpatchable, found
        )

    def host_settings(self, params: Mapping[str, Any], task_vars: Mapping[str, Any]) -> tuple[str, str]:
        """``(engine_dir, python)`` on the host: the arguments, else the defaults of the host's shell family."""
        windows = bool(getattr(self._connection._shell, "_IS_WINDOWS", False))
        engine_dir = params.get("engine_dir") or (WINDOWS_ENGINE_DIR if windows else POSIX_ENGINE_DIR)
        python = params.get("python")
        if not python and windows:
            python = self._connection._shell.join_path(engine_dir, "python", "python.exe")
        if not python:
            python = self._templar.template(task_vars.get("ansible_python_interpreter") or "")
            if not python or str(python).startswith("auto"):
                facts = task_vars.get("ansible_facts") or {}
                python = facts.get("discovered_interpreter_python") or DEFAULT_POSIX_PYTHON
        return str(engine_dir), str(python)

    def run_engine(
        self,
        params: dict[str, Any],
        task_vars: Mapping[str, Any],
        source: tuple[str, bool] | None,
        package: PackageInfo | None,
    ) -> EngineReply:
        """Probe, transfer what is missing, run the verb, parse its answer (flow in the module docstring)."""
        commands = host_commands(self._connection._shell)
        engine_dir, python = self.host_settings(params, task_vars)
        if isinstance(commands, PowerShellCommands) and getattr(self._play_context, "become", False):
            # runas only wraps Ansible's own PowerShell modules; a raw command runs as the connection user.
            self._display.warning("become is not applied to the engine on Windows: connect as an Administrator")
        verb = self.verb(params)
        changing = verb in CHANGING_VERBS and not self._task.check_mode
        archive: EngineArchive = engine_archive()
        uploads = [Upload(archive.path, archive.sha256, commands.join(engine_dir, archive.name))]
        if package is not None:
            uploads.append(
                Upload(package.path, package.sha256, commands.join(engine_dir, "packages", package.sha256 + ".hpk"))
            )

        probe = self._execute(commands.probe(python, engine_dir, changing, [u.cache_path for u in uploads]))
        lines = [line.strip() for line in probe["stdout"].splitlines()]
        marks = dict(line.split(":", 1) for line in lines if line.startswith(("dir:", "python:")))
        if probe["rc"] != 0 or "dir" not in marks:
            raise AnsibleActionFail(
                f"could not probe the host with Python {python} (rc {probe['rc']}): {_tail(probe['stderr'])}; "
                "set `python` to a Python >= 3.8 on the host",
                result={"engine_dir": engine_dir, "python": python},
            )
        if marks.get("python") == "missing":
            raise AnsibleActionFail(
                f"no Python runtime at {python} on the host: run the rebootless.windows.engine role or set `python`"
            )
        if changing and marks["dir"] == "missing":
            raise AnsibleActionFail(
                f"engine_dir {engine_dir} does not exist on the host: run the rebootless.windows.engine role first "
                "(it creates it with an ACL for Administrators and SYSTEM only) or set `engine_dir`"
            )
        digests = [line for line in lines if not line.startswith(("dir:", "python:")) and line][-len(uploads) :]
        # Cache on the host for changing runs, and for read-only verbs where engine_dir exists; check mode leaves
        # nothing behind (its copies live in the task's tmp dir, removed at the end).
        persistent = changing or (marks["dir"] == "ok" and not self._task.check_mode)
        transfer = self.transfer(uploads, digests, persistent)

        request = dict(self.request(params))
        if source is not None:
            request["package"] = transfer.paths[package.path] if package else source[0]
        if params.get("state_dir"):
            request["state_dir"] = params["state_dir"]
        request_path = self._connection._shell.join_path(self._tmp(), "request.json")
        self._transfer_data(request_path, json.dumps(request, sort_keys=True))
        self._fix_perms([request_path, *transfer.transferred])

        engine_path = transfer.paths[archive.path]
        done = self._execute(commands.run(python, engine_path, verb, request_path, transfer.installs))
        document = parse_document(done["stdout"])
        if document is None:
            raise AnsibleActionFail(
                f"the engine gave no JSON answer to {verb} (exit {done['rc']}): {_tail(done['stderr'] or done['stdout'])}; "
                f"check that {python} is Python >= 3.8",
                result={"engine_rc": done["rc"], "stderr": done["stderr"]},
            )
        self._display.vvv(f"rebootless: {verb} rc={done['rc']} transferred={transfer.sent}", host=self._host())
        return EngineReply(verb, int(done["rc"]), document, done["stderr"])

    def transfer(self, uploads: Sequence[Upload], digests: Sequence[str], persistent: bool) -> _Transfer:
        """Send each upload whose SHA-256 the host does not already have; returns the paths the engine uses."""
        plan = _Transfer()
        for index, upload in enumerate(uploads):
            cached = index < len(digests) and digests[index] == upload.sha256
            if cached:
                plan.paths[upload.local_path] = upload.cache_path
                continue
            remote = self._connection._shell.join_path(self._tmp(), upload.cache_path.replace("\\", "/").split("/")[-1])
            self._transfer_file(upload.local_path, remote)
            plan.transferred.append(remote)
            plan.paths[upload.local_path] = upload.cache_path if persistent else remote
            if persistent:
                plan.installs.append((remote, upload.cache_path))
                plan.sent.append(upload.cache_path)
        return plan

    def failure_message(self, reply: EngineReply) -> str:
        """What failed, in the engine's words, for ``msg``."""
        error = reply.error or {}
        kind = EXIT_KINDS.get(reply.rc, "unknown")
        if reply.rc == 1:
            reasons = "; ".join(reply.reasons) or "see processes[].reason"
            failed = [p for p in reply.processes if p.get("result") in ("failed", "refused")]
            return f"{reply.verb}: {len(failed)} of {len(reply.processes)} processes failed or were refused: {reasons}"
        message = error.get("message") or _tail(reply.stderr) or "no message"
        return f"{reply.verb} failed ({error.get('kind') or kind}, exit {reply.rc}): {message}"

    # -- plumbing -----------------------------------------------------------------------------------------

    def _tmp(self) -> str:
        if self._connection._shell.tmpdir is None:
            self._make_tmp_path()
        return str(self._connection._shell.tmpdir)

    def _execute(self, command: str) -> dict[str, Any]:
        result: dict[str, Any] = self._low_level_execute_command(command, sudoable=True)
        return result

    def _fix_perms(self, paths: list[str]) -> None:
        if not getattr(self._connection._shell, "_IS_WINDOWS", False):
            self._fixup_perms2([self._tmp(), *paths], execute=False)

    def _host(self) -> str | None:
        return getattr(self._play_context, "remote_addr", None)


def _tail(text: str, limit: int = 600) -> str:
    text = (text or "").strip()
    return text if len(text) <= limit else "..." + text[-limit:]
