"""Strict fakes of what cannot run here: the Windows registry (HKLM) and the OS's own tools.

``StrictRegistry``: every key and value the code reads must have been declared by the test, either with a
typed value (REG_DWORD / REG_SZ / REG_MULTI_SZ / REG_QWORD, data checked against the type) or as absent. Any other
read raises StrictViolation (an AssertionError), so each read in the code under test is a deliberate one.
``StrictRunner``: each expected command is declared with its exact argv and its answer, in order; any other
command, or an expected one left unrun (``assert_done``), fails the test.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.osupdate.registry import (
    REG_DWORD,
    REG_EXPAND_SZ,
    REG_MULTI_SZ,
    REG_QWORD,
    REG_SZ,
    Registry,
    RegValue,
)
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.osupdate.runner import Completed, Runner


class StrictViolation(AssertionError):
    """The code under test did something the test did not declare."""


def dword(value: int) -> RegValue:
    assert 0 <= value <= 0xFFFFFFFF
    return RegValue(REG_DWORD, value)


def qword(value: int) -> RegValue:
    assert 0 <= value <= 0xFFFFFFFFFFFFFFFF
    return RegValue(REG_QWORD, value)


def sz(value: str) -> RegValue:
    return RegValue(REG_SZ, value)


def multi_sz(*values: str) -> RegValue:
    return RegValue(REG_MULTI_SZ, list(values))


_TYPES = {REG_DWORD: int, REG_QWORD: int, REG_SZ: str, REG_EXPAND_SZ: str, REG_MULTI_SZ: list}


class StrictRegistry(Registry):
    """HKLM as the test declares it: ``values[(key, name)]`` or ``absent_values``, ``keys`` or ``absent_keys``.

    A declared value implies its key exists. Key paths compare case-insensitively, as Windows does.
    """

    def __init__(
        self,
        values: dict[tuple[str, str], RegValue] | None = None,
        absent_values: Sequence[tuple[str, str]] = (),
        keys: Sequence[str] = (),
        absent_keys: Sequence[str] = (),
    ) -> None:
        self.values = {(k.lower(), n.lower()): v for (k, n), v in (values or {}).items()}
        for value in self.values.values():
            expected = _TYPES.get(value.type)
            if expected is None or not isinstance(value.data, expected):
                raise StrictViolation(f"test declared a malformed registry value {value!r}")
        self.absent_values = {(k.lower(), n.lower()) for k, n in absent_values}
        self.keys = {k.lower() for k in keys} | {key for key, _name in self.values}
        self.absent_keys = {k.lower() for k in absent_keys}
        self.reads: list[str] = []

    def value(self, path: str, name: str) -> RegValue | None:
        key = (path.lower(), name.lower())
        self.reads.append(f"{path}\\{name}")
        if key in self.values:
            return self.values[key]
        if key in self.absent_values or path.lower() in self.absent_keys:
            return None
        raise StrictViolation(f"undeclared registry read: HKLM\\{path} value {name!r}")

    def key_exists(self, path: str) -> bool:
        self.reads.append(path)
        if path.lower() in self.keys:
            return True
        if path.lower() in self.absent_keys:
            return False
        raise StrictViolation(f"undeclared registry key check: HKLM\\{path}")


Answer = Completed | Callable[[list[str]], Completed] | BaseException


@dataclass
class Expected:
    """``argv`` exactly, or, when part of it is only known at run time (a temp dir), ``like`` must accept it."""

    argv: list[str]
    answer: Answer
    like: Callable[[list[str]], bool] | None = None


@dataclass
class StrictRunner(Runner):
    """Commands in the order the test expects them; ``answer`` may be a Completed, an exception to raise, or a
    callable (argv -> Completed) that does real work, e.g. runs cabextract."""

    expected: list[Expected] = field(default_factory=list)
    ran: list[list[str]] = field(default_factory=list)

    def expect(self, argv: Sequence[str], answer: Answer) -> None:
        self.expected.append(Expected(list(argv), answer))

    def expect_like(self, shape: Sequence[str], like: Callable[[list[str]], bool], answer: Answer) -> None:
        """An expected command whose argv ``like`` checks (``shape`` only describes it in failure messages)."""
        self.expected.append(Expected(list(shape), answer, like))

    def run(self, argv: Sequence[str], timeout_s: float) -> Completed:
        got = list(argv)
        if not self.expected:
            raise StrictViolation(f"unexpected command {got}")
        want = self.expected.pop(0)
        matches = want.like(got) if want.like is not None else got == want.argv
        if not matches:
            raise StrictViolation(f"command {got} != expected {want.argv}")
        self.ran.append(got)
        if isinstance(want.answer, BaseException):
            raise want.answer
        if callable(want.answer):
            return want.answer(got)
        return want.answer

    def assert_done(self) -> None:
        if self.expected:
            raise StrictViolation(f"expected commands never ran: {[e.argv for e in self.expected]}")
