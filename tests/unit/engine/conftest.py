"""Fixtures for engine unit tests: a strict fake backend, a fake module + package, and an in-process engine."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.host import faults
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.host.request import parse_request
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.host.verbs import execute

from .fake_backend import FakeBackend
from .images import Fixture, build

Runner = Callable[..., tuple[int, dict[str, Any]]]


class Killed(BaseException):
    """The engine reached the fault step named in REBOOTLESS_FAULT_STEP (os._exit in a real run)."""


@pytest.fixture
def backend() -> Iterator[FakeBackend]:
    fake = FakeBackend()
    yield fake
    assert not fake.open_handles, "the engine left process handles open"
    assert not [p.info.pid for p in fake.procs.values() if p.quiesced], "the engine left a process stopped"


@pytest.fixture
def fx(tmp_path: Path) -> Fixture:
    return build(tmp_path)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def run(backend: FakeBackend, fx: Fixture, state_dir: Path) -> Runner:
    """run(verb, **request keys) -> (exit code, result dict); package, state_dir and allow_unsigned default."""

    def runner(verb: str, **keys: Any) -> tuple[int, dict[str, Any]]:
        request = {"package": str(fx.package), "state_dir": str(state_dir), "allow_unsigned": True, "retry_delay_ms": 0}
        request.update(keys)
        request = {k: v for k, v in request.items() if v is not None}
        code, result = execute(parse_request(verb, request), backend)
        return code, result.to_dict()

    return runner


@pytest.fixture
def kill_at(monkeypatch: pytest.MonkeyPatch) -> Callable[[str | None], None]:
    """kill_at(step): the next engine run raises Killed at ``step`` (None: run normally again)."""

    def hook() -> None:
        raise Killed()

    monkeypatch.setattr(faults, "exit_hook", hook)

    def arm(step: str | None) -> None:
        if step is None:
            monkeypatch.delenv(faults.FAULT_ENV, raising=False)
        else:
            monkeypatch.setenv(faults.FAULT_ENV, step)

    return arm
