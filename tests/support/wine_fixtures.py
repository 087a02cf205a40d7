"""Fixtures shared by the integration tests that run the PE fixtures under Wine (a pytest plugin: see conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.pe import FixturePair, build_all
from tests.fixtures.wine import wine_prefix


@pytest.fixture(scope="session")
def prefix() -> Path:
    """The tests' 64-bit Wine prefix (initialised once); skips when wine64 is not installed."""
    try:
        return wine_prefix()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def pairs() -> dict[str, FixturePair]:
    """Every PE fixture pair, built (or taken from the build cache); skips when a toolchain is missing."""
    try:
        return build_all()
    except FileNotFoundError as exc:
        pytest.skip(f"toolchain missing: {exc}")
