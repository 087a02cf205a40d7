"""Secrets never reach output: WinRM passwords in the inventory and the signing key in REBOOTLESS_SIGNING_KEY.

One private demo host (its own fleet root and port) gets ``ansible_password`` / ``ansible_winrm_password`` (and a
become password) in its inventory and an http health check reading a status page with ``url_password``; a fresh
Ed25519 key signs the demo package through the signing command line with the key only in
REBOOTLESS_SIGNING_KEY; the rollout (playbooks/hotpatch.yml, signed package, trusted public
key, unsigned refused) runs under ansible-runner at -vvv with that variable in its environment and remote files
kept. Then every byte the run left is searched for each secret: the runner's stdout and job events, the report
files (JSON, Markdown, HTML, JUnit), the host's engine folder (zipapp cache, journal, state, rollout markers),
the kept remote files, Ansible's log file and the controller's temporary files.

Not searched, on purpose: the inputs that hold the secrets (the inventory, the runner's ``env/`` folder), and
``artifacts/<id>/command``, where ansible-runner itself records the environment it ran with (see
test_ansible_runner_records_its_environment, which pins that fact so the docs can warn about it).
"""

from __future__ import annotations

import base64
import importlib
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import ansible_runner
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ansible_collections.rebootless.windows.plugins.plugin_utils._signing import public_key_text
from demo.fleet import Fleet
from demo.main_job import PLAYBOOK, POLICY, REPO_ROOT, build_demo_package, playbook_environment
from tests.fixtures.pe import build_all
from tests.support.running_fleet import running_fleet

pytestmark = [pytest.mark.wine, pytest.mark.integration]

HOTPATCH_BUILD = REPO_ROOT / "scripts" / "hotpatch-build"  # the patch author's command line (sign goes to _signing)
# Option names that would carry a secret; each must be no_log unless it is listed as public here.
SECRET_WORDS = ("password", "passwd", "passphrase", "secret", "token", "key", "credential")
PUBLIC_OPTIONS = {"trusted_keys"}  # Ed25519 public keys


@dataclass(frozen=True)
class Secrets:
    """The secret strings of one run: the WinRM/become passwords and every form of the private signing key."""

    winrm_password: str
    become_password: str
    http_password: str
    key_pem: str
    public_key: str

    def needles(self) -> dict[str, bytes]:
        """name -> bytes that must appear nowhere: each password, the PEM, its body, the raw key (b64 and hex)."""
        key = serialization.load_pem_private_key(self.key_pem.encode(), password=None)
        assert isinstance(key, Ed25519PrivateKey)
        raw = key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        body = "".join(line for line in self.key_pem.splitlines() if not line.startswith("-----"))
        return {
            "ansible_password": self.winrm_password.encode(),
            "ansible_become_password": self.become_password.encode(),
            "health check url_password": self.http_password.encode(),
            "signing key PEM body": body.encode(),
            "signing key (raw, base64)": base64.b64encode(raw).rstrip(b"="),
            "signing key (raw, hex)": raw.hex().encode(),
        }


def leaks(paths: list[Path], needles: dict[str, bytes], skip: tuple[Path, ...] = ()) -> list[str]:
    """Every (file, secret name) where a secret appears in a file under ``paths`` (text or binary, any depth)."""
    found = []
    for top in paths:
        files = [top] if top.is_file() else [p for p in top.rglob("*") if p.is_file() and not p.is_symlink()]
        for path in files:
            if any(path == s or s in path.parents for s in skip):
                continue
            data = path.read_bytes()
            found += [f"{path}: {name}" for name, needle in needles.items() if needle in data]
    return found


@pytest.fixture(scope="module")
def secrets() -> Secrets:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    tag = uuid.uuid4().hex
    return Secrets(
        f"WinRM-{tag[:10]}-Pw!", f"Become-{tag[10:20]}-Pw!", f"Http-{tag[20:30]}-Pw!", pem, public_key_text(key)
    )


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    try:
        build_all()
    except FileNotFoundError as exc:
        pytest.skip(f"toolchain missing: {exc}")
    with running_fleet(tmp_path_factory.mktemp("secrets-fleet"), hosts=1, mismatch_host=0) as fleet:
        yield fleet


class _StatusPage(BaseHTTPRequestHandler):
    """A status page behind basic auth (the role's http health check with url_username/url_password)."""

    password = ""

    def do_GET(self) -> None:
        wanted = "Basic " + base64.b64encode(f"monitor:{self.password}".encode()).decode()
        ok = self.headers.get("Authorization") == wanted
        self.send_response(200 if ok else 401)
        if not ok:
            self.send_header("WWW-Authenticate", 'Basic realm="status"')
        self.end_headers()
        self.wfile.write(b"healthy\n" if ok else b"")

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@pytest.fixture(scope="module")
def status_page(secrets: Secrets) -> Iterator[str]:
    handler = type("StatusPage", (_StatusPage,), {"password": secrets.http_password})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)  # port 0: the kernel picks a free one
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/status"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class SignedRun:
    """The signing step's output and the rollout's: runner result, folders it wrote, the files to search."""

    sign_output: str
    package: Path
    runner: Any
    searched: list[Path]
    skip: tuple[Path, ...]


@pytest.fixture(scope="module")
def signed_run(
    fleet: Fleet, secrets: Secrets, status_page: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SignedRun]:
    work = tmp_path_factory.mktemp("secrets-run")
    host = fleet.hosts()[0]
    unsigned = build_demo_package(work / "packages").path
    package = work / "signed.hpk"
    env = {**playbook_environment(), "REBOOTLESS_SIGNING_KEY": secrets.key_pem}
    signing = subprocess.run(
        [sys.executable, str(HOTPATCH_BUILD), "sign", "--out", str(package), str(unsigned)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )
    assert signing.returncode == 0, signing.stdout + signing.stderr

    creds = work / "credentials.yml"
    host_vars = {
        "ansible_user": "Administrator",
        "ansible_password": secrets.winrm_password,
        "ansible_winrm_password": secrets.winrm_password,
        "ansible_become_password": secrets.become_password,
    }
    creds.write_text(yaml.safe_dump({"all": {"hosts": {host: host_vars}}}))
    runner_dir = work / "runner"
    runner_dir.mkdir()
    log = work / "ansible.log"
    local_tmp = work / "local-tmp"
    keep = {
        "ANSIBLE_COLLECTIONS_PATH": env["ANSIBLE_COLLECTIONS_PATH"],
        "WINEDEBUG": "-all",
        "WINEDLLOVERRIDES": "mscoree,mshtml=",
        "ANSIBLE_LOG_PATH": str(log),
        "ANSIBLE_LOCAL_TEMP": str(local_tmp),
        "ANSIBLE_KEEP_REMOTE_FILES": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    }
    old = os.environ.get("REBOOTLESS_SIGNING_KEY")
    os.environ["REBOOTLESS_SIGNING_KEY"] = secrets.key_pem  # in the environment of everything the run starts
    try:
        result = ansible_runner.run(
            private_data_dir=str(runner_dir),
            project_dir=str(REPO_ROOT),
            playbook=str(PLAYBOOK),
            inventory=[str(fleet.inventory_path), str(POLICY), str(creds)],
            extravars={
                "hotpatch_package": str(package),
                "hotpatch_target": "demo_fleet",
                "hotpatch_allow_unsigned": False,
                "hotpatch_trusted_keys": [secrets.public_key],
                "hotpatch_report_dir": str(work / "report"),
                "demo_fault_hosts": [],
                "hotpatch_health_checks": [
                    {"name": "port open", "type": "tcp", "port": fleet.load_host(host).port},
                    {
                        "name": "status page",
                        "type": "http",
                        "url": status_page,
                        "url_username": "monitor",
                        "url_password": secrets.http_password,
                        "body": "healthy",
                    },
                ],
            },
            envvars=keep,
            verbosity=3,
            quiet=True,
        )
    finally:
        if old is None:
            os.environ.pop("REBOOTLESS_SIGNING_KEY", None)
        else:
            os.environ["REBOOTLESS_SIGNING_KEY"] = old
    artifacts = Path(result.config.artifact_dir)
    assert leaks([creds], secrets.needles()), "the search cannot even find the passwords in their own inventory"
    searched = [
        runner_dir,
        work / "report",
        fleet.host_dir(host) / "ProgramData",
        fleet.host_dir(host) / "tmp",
        fleet.root / "logs",
        log,
        local_tmp,
        package,
    ]
    yield SignedRun(
        signing.stdout + signing.stderr, package, result, searched, (runner_dir / "env", artifacts / "command")
    )


@pytest.mark.slow
def test_the_signed_rollout_runs_at_vvv_and_patches_the_host(signed_run: SignedRun, fleet: Fleet) -> None:
    result = signed_run.runner
    stdout = Path(result.config.artifact_dir, "stdout").read_text()
    assert result.status == "successful", stdout[-3000:]
    assert "<demo-host-1> ESTABLISH LOCAL CONNECTION" in stdout  # really -vvv
    assert fleet.request(fleet.hosts()[0], "VERSION") == "appcore 1.0.1"
    report = yaml.safe_load(Path(signed_run.searched[1], "hotpatch-report.json").read_text())
    (entry,) = report["hosts"]
    assert entry["result"] == "hotpatched" and not entry.get("allow_unsigned"), entry
    checks = {(c["phase"], c["name"]): c["ok"] for c in entry["health"]}
    assert checks[("pre", "status page")] is True, entry["health"]  # the password really went to the page
    assert checks[("post", "status page")] is True and checks[("post", "VERSION is the fix")] is True, checks


HTTP_NEEDLE = "health check url_password"


@pytest.mark.slow
def test_no_winrm_password_or_signing_key_appears_in_any_output_report_journal_or_artifact(
    signed_run: SignedRun, secrets: Secrets
) -> None:
    needles = {k: v for k, v in secrets.needles().items() if k != HTTP_NEEDLE}
    found = leaks(signed_run.searched, needles, skip=signed_run.skip)
    assert found == [], "\n".join(found)
    assert not [n for n, v in needles.items() if v in signed_run.sign_output.encode()]
    # The searches looked at something: the report formats, the journal and the job events exist.
    report = signed_run.searched[1]
    assert {p.suffix for p in report.iterdir()} >= {".json", ".md", ".html", ".xml"}
    assert list(signed_run.searched[2].rglob("journal/**/*.json")), "no journal written"
    assert list(signed_run.searched[3].rglob("AnsiballZ_*")), "remote files were not kept"
    assert list(Path(signed_run.runner.config.artifact_dir, "job_events").glob("*.json"))


@pytest.mark.slow
def test_no_health_check_password_appears_in_any_output_report_or_artifact(
    signed_run: SignedRun, secrets: Secrets
) -> None:
    # Kept remote module payloads (AnsiballZ_uri.py) carry the uri task's arguments by Ansible's design: only
    # ANSIBLE_KEEP_REMOTE_FILES, a debugging switch, keeps them. Everything else must be clean.
    needles = {HTTP_NEEDLE: secrets.needles()[HTTP_NEEDLE]}
    found = [f for f in leaks(signed_run.searched, needles, skip=signed_run.skip) if "/AnsiballZ_" not in f]
    assert found == [], "\n".join(found)


@pytest.mark.slow
def test_ansible_runner_records_its_environment(signed_run: SignedRun, secrets: Secrets) -> None:
    """ansible-runner (not this collection) writes its whole environment to artifacts/<id>/command: a signing key
    exported where rollouts run ends up there, so signing belongs in the build pipeline, never in the job's env."""
    command = Path(signed_run.runner.config.artifact_dir, "command").read_text()
    assert secrets.needles()["signing key PEM body"].decode() in command.replace("\\n", "\n")


def test_a_broken_signing_key_is_never_quoted_in_the_error(tmp_path: Path) -> None:
    secret = f"-----BEGIN PRIVATE KEY-----\nNOTAKEY{uuid.uuid4().hex}SECRET\n-----END PRIVATE KEY-----\n"
    package = build_demo_package(tmp_path / "packages").path
    done = subprocess.run(
        [sys.executable, str(HOTPATCH_BUILD), "sign", "--out", str(tmp_path / "x.hpk"), str(package)],
        capture_output=True,
        text=True,
        env={**playbook_environment(), "REBOOTLESS_SIGNING_KEY": secret},
        check=False,
        timeout=120,
    )
    assert done.returncode != 0 and "REBOOTLESS_SIGNING_KEY" in done.stdout + done.stderr
    assert "NOTAKEY" not in done.stdout + done.stderr
    assert not (tmp_path / "x.hpk").exists()


def _options(spec: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    for name, option in spec.items():
        yield prefix + name, option
        yield from _options(option.get("options") or {}, f"{prefix}{name}.")


ACTIONS = sorted(p.stem for p in (REPO_ROOT / "plugins" / "action").glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("name", ACTIONS)
def test_every_option_that_could_carry_a_secret_is_no_log(name: str) -> None:
    plugin = importlib.import_module(f"ansible_collections.rebootless.windows.plugins.action.{name}")
    spec = getattr(plugin.ActionModule, "ARGUMENT_SPEC", None) or getattr(plugin.ActionModule, "_SPEC", None)
    assert isinstance(spec, dict) and spec, f"{name}: no argument spec found (ARGUMENT_SPEC or _SPEC)"
    for name, option in _options(spec):
        leaf = name.rsplit(".", 1)[-1]
        if any(word in leaf.lower() for word in SECRET_WORDS):
            if leaf in PUBLIC_OPTIONS:
                assert option.get("no_log") is False, f"{name}: public, say so with no_log: False"
            else:
                assert option.get("no_log") is True, f"{plugin.__name__}: option {name} may carry a secret: no_log"


def test_role_options_that_could_carry_a_secret_are_no_log() -> None:
    specs = yaml.safe_load((REPO_ROOT / "roles" / "hotpatch" / "meta" / "argument_specs.yml").read_text())
    checked = 0
    for entry in specs["argument_specs"].values():
        for name, option in _options(entry.get("options") or {}):
            leaf = name.rsplit(".", 1)[-1]
            if (
                any(word in leaf.lower() for word in SECRET_WORDS)
                and leaf.replace("hotpatch_", "") not in PUBLIC_OPTIONS
            ):
                checked += 1
                assert option.get("no_log") is True, f"role option {name} may carry a secret: mark it no_log"
    assert checked >= 1  # url_password of the HTTP health check
