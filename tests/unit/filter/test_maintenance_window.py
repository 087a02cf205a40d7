"""Maintenance windows: weekly recurrence in the host's wall clock, DST edges, midnight crossing, bad input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from ansible.errors import AnsibleFilterError
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.rebootless.windows.plugins.filter.maintenance_window import FilterModule, maintenance_window

BERLIN_SUN_0230 = {"name": "sunday", "days": ["sun"], "start": "02:30", "duration": "1h", "timezone": "Europe/Berlin"}


def test_window_is_open_inside_and_closed_outside_with_next_opening() -> None:
    window = {"days": ["sat"], "start": "02:00", "duration": "4h", "timezone": "UTC", "name": "sat"}
    inside = maintenance_window(window, "2026-12-05T03:00:00Z")  # a Saturday
    assert inside["open"] is True
    assert inside["window"] == "sat"
    assert inside["closes_at"] == "2026-12-05T06:00:00Z"
    assert inside["seconds_until_open"] == 0
    before = maintenance_window(window, "2026-12-05T01:59:59Z")
    assert before["open"] is False
    assert before["next_open"] == "2026-12-05T02:00:00Z"
    assert before["seconds_until_open"] == 1
    at_close = maintenance_window(window, "2026-12-05T06:00:00Z")  # the end is exclusive
    assert at_close["open"] is False
    assert at_close["next_open"] == "2026-12-12T02:00:00Z"


def test_local_wall_clock_is_converted_through_the_zone() -> None:
    window = {"days": ["mon"], "start": "09:00", "duration": 30, "timezone": "Asia/Kolkata"}
    state = maintenance_window(window, "2026-12-07T03:35:00Z")  # 09:05 IST on a Monday
    assert state["open"] is True
    assert state["closes_at"] == "2026-12-07T04:00:00Z"


def test_spring_forward_nonexistent_start_opens_after_the_gap() -> None:
    # 2026-03-29: Europe/Berlin jumps 02:00 CET -> 03:00 CEST; 02:30 does not exist and opens at 03:30 CEST.
    closed = maintenance_window(BERLIN_SUN_0230, "2026-03-29T01:29:00Z")
    assert closed["open"] is False
    assert closed["next_open"] == "2026-03-29T01:30:00Z"  # 03:30 CEST
    opened = maintenance_window(BERLIN_SUN_0230, "2026-03-29T01:30:00Z")
    assert opened["open"] is True
    assert opened["closes_at"] == "2026-03-29T02:30:00Z"  # elapsed hour, 04:30 CEST


def test_fall_back_ambiguous_start_opens_at_the_first_occurrence_and_lasts_elapsed_time() -> None:
    # 2026-10-25: Europe/Berlin goes 03:00 CEST -> 02:00 CET; 02:30 happens twice, the first is 00:30 UTC.
    state = maintenance_window(BERLIN_SUN_0230, "2026-10-25T00:30:00Z")
    assert state["open"] is True
    assert state["closes_at"] == "2026-10-25T01:30:00Z"
    # The second 02:30 (01:30 UTC) is outside: the window already closed, it does not open twice.
    second = maintenance_window(BERLIN_SUN_0230, "2026-10-25T01:45:00Z")
    assert second["open"] is False
    assert second["next_open"] == "2026-11-01T01:30:00Z"  # CET from now on


def test_window_spanning_a_transition_keeps_its_elapsed_duration() -> None:
    window = {"days": ["sun"], "start": "01:00", "duration": "3h", "timezone": "America/New_York"}
    # 2026-03-08 02:00 EST -> 03:00 EDT. Opens 01:00 EST = 06:00 UTC, closes 3 elapsed hours later, 05:00 EDT.
    state = maintenance_window(window, "2026-03-08T08:30:00Z")
    assert state["open"] is True
    assert state["closes_at"] == "2026-03-08T09:00:00Z"


def test_window_crossing_midnight_is_open_on_the_next_day() -> None:
    window = {"days": ["fri"], "start": "22:00", "duration": "6h", "timezone": "America/New_York"}
    # Saturday 02:00 EST = 07:00 UTC, inside Friday's window.
    state = maintenance_window(window, "2026-12-05T07:00:00Z")
    assert state["open"] is True
    assert state["closes_at"] == "2026-12-05T09:00:00Z"
    # Saturday 22:30 local is not a window day.
    assert maintenance_window(window, "2026-12-06T03:30:00Z")["open"] is False


def test_week_wraps_from_sunday_to_monday() -> None:
    window = {"days": ["sun"], "start": "23:00", "duration": "2h", "timezone": "UTC"}
    assert maintenance_window(window, "2026-12-07T00:30:00Z")["open"] is True  # Monday 00:30


def test_several_windows_pick_the_earliest_next_and_the_latest_close() -> None:
    windows = [
        {"name": "short", "days": ["tue"], "start": "01:00", "duration": "1h", "timezone": "UTC"},
        {"name": "long", "days": ["tue"], "start": "00:30", "duration": "3h", "timezone": "UTC"},
        {"name": "thu", "days": ["thursday"], "start": "01:00", "duration": "1h", "timezone": "UTC"},
    ]
    state = maintenance_window(windows, "2026-12-01T01:15:00Z")
    assert state["open"] is True
    assert state["window"] == "long"
    assert state["closes_at"] == "2026-12-01T03:30:00Z"
    later = maintenance_window(windows, "2026-12-01T04:00:00Z")
    assert later["next_window"] == "thu"
    assert later["next_open"] == "2026-12-03T01:00:00Z"


def test_no_windows_means_closed_with_no_next_opening() -> None:
    state = maintenance_window([], "2026-12-01T00:00:00Z")
    assert state["open"] is False
    assert state["next_open"] is None
    assert maintenance_window([], "2026-12-01T00:00:00Z", always_open_when_empty=True)["open"] is True


def test_now_defaults_to_the_current_time() -> None:
    always = {
        "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
        "start": "00:00",
        "duration": "1d",
        "timezone": "UTC",
    }
    assert maintenance_window(always)["open"] is True


@pytest.mark.parametrize(
    ("window", "message"),
    [
        ({"days": ["sun"], "start": "25:00", "duration": 60}, "HH:MM"),
        ({"days": ["sun"], "start": "2:00pm", "duration": 60}, "HH:MM"),
        ({"days": ["someday"], "start": "02:00", "duration": 60}, "unknown day"),
        ({"days": [], "start": "02:00", "duration": 60}, "non-empty"),
        ({"days": ["sun"], "start": "02:00", "duration": 0}, "more than 0"),
        ({"days": ["sun"], "start": "02:00", "duration": "8d"}, "at most 7 days"),
        ({"days": ["sun"], "start": "02:00", "duration": "soon"}, "not minutes"),
        ({"days": ["sun"], "start": "02:00", "duration": True}, "boolean"),
        ({"days": ["sun"], "start": "02:00", "duration": 60, "timezone": "Mars/Olympus"}, "IANA"),
        ({"days": ["sun"], "start": "02:00"}, "missing 'duration'"),
        ({"days": ["sun"], "start": "02:00", "duration": 60, "tz": "UTC"}, "unknown keys"),
        ("sunday 2am", "mapping"),
    ],
)
def test_invalid_windows_are_refused_with_what_to_fix(window: object, message: str) -> None:
    with pytest.raises(AnsibleFilterError, match=message):
        maintenance_window(window, "2026-12-01T00:00:00Z")


def test_now_without_offset_is_refused() -> None:
    with pytest.raises(AnsibleFilterError, match="no UTC offset"):
        maintenance_window(BERLIN_SUN_0230, "2026-12-01T00:00:00")
    with pytest.raises(AnsibleFilterError, match="ISO 8601"):
        maintenance_window(BERLIN_SUN_0230, "yesterday")


def test_filter_is_exported_under_its_name() -> None:
    assert FilterModule().filters()["maintenance_window"] is maintenance_window


@given(
    minute=st.integers(min_value=0, max_value=7 * 24 * 60 - 1),
    zone=st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu"]),
    start=st.sampled_from(["00:00", "01:30", "02:30", "23:45"]),
    duration=st.integers(min_value=1, max_value=24 * 60),
)
def test_open_means_now_is_within_an_opening_and_next_open_is_in_the_future(
    minute: int, zone: str, start: str, duration: int
) -> None:
    now = datetime(2026, 3, 23, tzinfo=UTC) + timedelta(minutes=minute)  # the week of a European DST change
    window = {"days": ["sun", "wed"], "start": start, "duration": duration, "timezone": zone}
    state = maintenance_window(window, now.isoformat())
    if state["open"]:
        closes = datetime.fromisoformat(state["closes_at"].replace("Z", "+00:00"))
        assert now < closes <= now + timedelta(minutes=duration)
    next_open = datetime.fromisoformat(state["next_open"].replace("Z", "+00:00"))
    assert now < next_open <= now + timedelta(days=7, hours=1)
    # At the announced opening the window really is open.
    assert maintenance_window(window, next_open.isoformat())["open"] is True
