"""Fixtures of the backend tests: the strict kernel32 fake with one three-thread target process."""

from __future__ import annotations

import pytest

from .fake_kernel32 import FakeKernel32
from .windows_target import MODULE_BASE, PID, module_image


@pytest.fixture
def kernel() -> FakeKernel32:
    fake = FakeKernel32()
    fake.add_process(PID, "appsvc.exe", MODULE_BASE, bytes(module_image()), threads=3)
    return fake
