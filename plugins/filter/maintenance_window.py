# Copyright: rebootless.windows contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter ``rebootless.windows.maintenance_window``: is a host's maintenance window open, and when does it open next.

A window is a weekly recurrence written in the host's own wall clock::

    {"days": ["sat", "sun"], "start": "02:00", "duration": "4h", "timezone": "Europe/Berlin", "name": "weekend"}

``days`` are three-letter English day names (or full names, any case) on which the window STARTS; ``start`` is
``HH:MM`` local time; ``duration`` is minutes (int) or a string such as ``90m``, ``4h``, ``1h30m`` (elapsed time,
at most 7 days); ``timezone`` is an IANA name (default ``UTC``). A window may cross midnight (start 22:00, 6h).

DST edges, decided once here so every host behaves alike:

- a start time that does not exist that day (spring forward, e.g. 02:30 in Europe/Berlin on the last Sunday of
  March) opens at the same instant as the wall clock after the gap (03:30 local): the start is shifted by the gap;
- a start time that exists twice (fall back) opens at its FIRST occurrence;
- ``duration`` is elapsed time, so a 4 h window that spans a transition still lasts 4 h.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

try:
    from ansible.errors import AnsibleFilterError
except ImportError:  # pragma: no cover - the filter is always loaded by ansible; this keeps the helpers importable

    class AnsibleFilterError(Exception):  # type: ignore[no-redef]
        """Stand-in when ansible is absent."""


__all__ = ["MaintenanceWindow", "WindowState", "evaluate", "maintenance_window", "parse_window"]

_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DAYS = {**{n[:3]: i for i, n in enumerate(_DAY_NAMES)}, **{n: i for i, n in enumerate(_DAY_NAMES)}}
_DURATION_RE = re.compile(r"^\s*(?:(?P<d>\d+)\s*d)?\s*(?:(?P<h>\d+)\s*h)?\s*(?:(?P<m>\d+)\s*m(?:in)?)?\s*$")
_START_RE = re.compile(r"^(?P<h>[01]?\d|2[0-3]):(?P<m>[0-5]\d)$")
_MAX_DURATION = timedelta(days=7)


@dataclass(frozen=True)
class MaintenanceWindow:
    """One weekly window: start weekdays (0 = Monday), local start time, elapsed duration, IANA zone."""

    name: str
    days: tuple[int, ...]
    start: time
    duration: timedelta
    timezone: str

    def opening_at(self, day: date) -> datetime:
        """UTC instant at which the window opening on local date ``day`` opens (DST rules in the module doc)."""
        # fold=0 gives the first occurrence of an ambiguous time; for a nonexistent one it applies the offset from
        # before the gap, which lands after the gap by exactly its length: the documented "shifted by the gap".
        return datetime.combine(day, self.start, tzinfo=ZoneInfo(self.timezone)).astimezone(UTC)


@dataclass(frozen=True)
class WindowState:
    """Result of evaluating windows at an instant; ``as_dict`` is what the filter returns."""

    open: bool
    now: datetime
    window: str | None
    closes_at: datetime | None
    next_open: datetime | None
    next_window: str | None

    def as_dict(self) -> dict[str, Any]:
        """``{open, now, window, closes_at, next_open, next_window, seconds_until_open}``; times are ISO 8601 UTC."""

        def iso(value: datetime | None) -> str | None:
            return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None

        until = None
        if self.next_open is not None:
            until = max(0, int((self.next_open - self.now).total_seconds()))
        return {
            "open": self.open,
            "now": iso(self.now),
            "window": self.window,
            "closes_at": iso(self.closes_at),
            "next_open": iso(self.next_open),
            "next_window": self.next_window,
            "seconds_until_open": 0 if self.open else until,
        }


def _parse_duration(value: Any, where: str) -> timedelta:
    if isinstance(value, bool):
        raise AnsibleFilterError(f"{where}: duration must be minutes or a string like '4h' or '1h30m', not a boolean")
    if isinstance(value, int):
        minutes = value
    elif isinstance(value, str) and value.strip().isdigit():
        minutes = int(value.strip())
    elif isinstance(value, str) and (m := _DURATION_RE.match(value)) and any(m.groupdict().values()):
        parts = {k: int(v) if v else 0 for k, v in m.groupdict().items()}
        minutes = parts["d"] * 1440 + parts["h"] * 60 + parts["m"]
    else:
        raise AnsibleFilterError(f"{where}: duration {value!r} is not minutes or a string like '90m', '4h', '1h30m'")
    duration = timedelta(minutes=minutes)
    if duration <= timedelta(0) or duration > _MAX_DURATION:
        raise AnsibleFilterError(f"{where}: duration {value!r} must be more than 0 and at most 7 days")
    return duration


def _parse_days(value: Any, where: str) -> tuple[int, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not value:
        raise AnsibleFilterError(f"{where}: days must be a non-empty list such as ['sat', 'sun'], got {value!r}")
    days = set()
    for item in value:
        key = str(item).strip().lower()
        if key not in _DAYS:
            raise AnsibleFilterError(f"{where}: unknown day {item!r}; use mon, tue, wed, thu, fri, sat, sun")
        days.add(_DAYS[key])
    return tuple(sorted(days))


def parse_window(spec: Any, index: int = 0) -> MaintenanceWindow:
    """Validate one window mapping; raises AnsibleFilterError naming the window and the field to fix."""
    where = f"maintenance window {index}"
    if not isinstance(spec, dict):
        raise AnsibleFilterError(f"{where}: expected a mapping with days, start, duration, timezone; got {spec!r}")
    name = str(spec.get("name") or f"window-{index}")
    where = f"maintenance window {name!r}"
    unknown = set(spec) - {"name", "days", "start", "duration", "timezone"}
    if unknown:
        raise AnsibleFilterError(
            f"{where}: unknown keys {sorted(unknown)}; allowed: name, days, start, duration, timezone"
        )
    for key in ("days", "start", "duration"):
        if key not in spec:
            raise AnsibleFilterError(f"{where}: missing {key!r}")
    start_match = _START_RE.match(str(spec["start"]).strip())
    if not start_match:
        raise AnsibleFilterError(f"{where}: start {spec['start']!r} is not a 24-hour HH:MM time such as '02:00'")
    zone_name = str(spec.get("timezone") or "UTC")
    try:
        ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise AnsibleFilterError(
            f"{where}: timezone {zone_name!r} is not an IANA zone name such as 'Europe/Berlin'"
        ) from exc
    return MaintenanceWindow(
        name=name,
        days=_parse_days(spec["days"], where),
        start=time(int(start_match["h"]), int(start_match["m"])),
        duration=_parse_duration(spec["duration"], where),
        timezone=zone_name,
    )


def evaluate(windows: list[MaintenanceWindow], now: datetime) -> WindowState:
    """Open/closed at ``now`` (aware) across ``windows``, with the latest closing of the open ones and next opening."""
    if now.tzinfo is None:
        raise AnsibleFilterError("now must carry a time zone (e.g. '2026-03-29T01:30:00Z')")
    now = now.astimezone(UTC)
    open_until: tuple[datetime, str] | None = None
    upcoming: tuple[datetime, str] | None = None
    for window in windows:
        zone = ZoneInfo(window.timezone)
        local_today = now.astimezone(zone).date()
        # Openings from 8 days back (a 7-day window started last week may still be open) to 8 days ahead.
        for offset in range(-8, 9):
            day = local_today + timedelta(days=offset)
            if day.weekday() not in window.days:
                continue
            opens = window.opening_at(day)
            closes = opens + window.duration
            if opens <= now < closes:
                if open_until is None or closes > open_until[0]:
                    open_until = (closes, window.name)
            elif opens > now and (upcoming is None or opens < upcoming[0]):
                upcoming = (opens, window.name)
    if open_until is not None:
        return WindowState(
            True,
            now,
            open_until[1],
            open_until[0],
            upcoming[0] if upcoming else None,
            upcoming[1] if upcoming else None,
        )
    return WindowState(False, now, None, None, upcoming[0] if upcoming else None, upcoming[1] if upcoming else None)


def _parse_now(now: Any) -> datetime:
    if now is None or now == "":
        return datetime.now(UTC)
    if isinstance(now, datetime):
        value = now
    else:
        text = str(now).strip()
        try:
            value = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
        except ValueError as exc:
            raise AnsibleFilterError(f"now {now!r} is not an ISO 8601 time such as '2026-03-29T01:30:00Z'") from exc
    if value.tzinfo is None:
        raise AnsibleFilterError(f"now {now!r} has no UTC offset; write it as '...Z' or '...+02:00'")
    return value


def maintenance_window(windows: Any, now: Any = None, always_open_when_empty: bool = False) -> dict[str, Any]:
    """Evaluate a host's maintenance windows.

    ``windows``: a window mapping or a list of them (module doc). ``now``: ISO 8601 with offset, a datetime, or
    None for the current time. An empty list means "no window": closed forever (next_open None) unless
    ``always_open_when_empty``. Returns ``WindowState.as_dict()``; raises AnsibleFilterError on invalid input.
    """
    if windows is None:
        windows = []
    if isinstance(windows, dict):
        windows = [windows]
    if not isinstance(windows, list):
        raise AnsibleFilterError(f"maintenance windows must be a list of mappings, got {type(windows).__name__}")
    parsed = [parse_window(spec, i) for i, spec in enumerate(windows)]
    instant = _parse_now(now)
    if not parsed:
        state = WindowState(bool(always_open_when_empty), instant.astimezone(UTC), None, None, None, None)
        if always_open_when_empty:
            state = WindowState(True, instant.astimezone(UTC), "always", None, None, None)
        return state.as_dict()
    return evaluate(parsed, instant).as_dict()


class FilterModule:
    """Ansible entry point."""

    def filters(self) -> dict[str, Any]:
        return {"maintenance_window": maintenance_window}
