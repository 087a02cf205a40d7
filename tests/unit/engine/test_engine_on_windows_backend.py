"""The engine's sequence over the real Windows backend, driven by the strict kernel32 fake of its tests.

The fake refuses what Windows punishes (code written while a thread runs, remote threads while suspended,
leaked handles), so a passing apply/verify/rollback shows the engine and the backend agree on the protocol.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.backends.base import Backend
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.backends.windows import WindowsBackend
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.host.request import parse_request
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.host.verbs import execute
from tests.unit.backends.fake_kernel32 import FakeKernel32

from .images import BASE, MODULE, Fixture


def _run(backend: Backend, fx: Fixture, state_dir: Path, verb: str) -> tuple[int, dict[str, Any]]:
    request = {"package": str(fx.package), "state_dir": str(state_dir), "allow_unsigned": True, "retry_delay_ms": 0}
    code, result = execute(parse_request(verb, request), backend)
    return code, result.to_dict()


def test_apply_verify_rollback_through_the_windows_backend(fx: Fixture, state_dir: Path) -> None:
    kernel = FakeKernel32()
    kernel.add_process(4242, MODULE, BASE, fx.base_image, threads=3)
    # cast: the backends' Quiesced classes declare ``threads`` as a list, which the Protocol's mutable
    # Sequence attribute does not accept under mypy (base.py could make it a read-only property)
    backend: Backend = WindowsBackend(api=kernel)

    code, result = _run(backend, fx, state_dir, "apply")
    assert code == 0 and result["platform"] == "windows", result
    (proc,) = result["processes"]
    assert (proc["pid"], proc["result"], proc["code_after"]) == (4242, "patched", "patched")
    image = kernel.processes[4242].regions[0].data
    entry = fx.manifest.functions[0].base_rva
    assert bytes(image[entry : entry + 2]) == b"\xeb\xf9"

    assert _run(backend, fx, state_dir, "apply")[1]["processes"][0]["result"] == "already_patched"
    assert _run(backend, fx, state_dir, "verify")[1]["processes"][0]["code_after"] == "patched"

    code, result = _run(backend, fx, state_dir, "rollback")
    assert code == 0 and result["processes"][0]["result"] == "rolled_back", result
    assert bytes(image) == fx.base_image
    kernel.assert_no_leaks()
