"""Request field checks shared by the engine's verbs (fields.py) and both request parsers that use them."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch import fields
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.errors import RequestError
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.host.request import parse_request
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.osupdate.kb import parse_kb_request

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)


def _message(call: Any) -> str:
    with pytest.raises(RequestError) as caught:
        call()
    return str(caught.value)


def test_an_unknown_verb_names_the_accepted_ones() -> None:
    assert _message(lambda: fields.known_verb("explode", ("a", "b"))) == "unknown verb 'explode': use one of a, b"
    fields.known_verb("a", ("a", "b"))


def test_the_request_must_be_an_object_with_known_keys_only() -> None:
    assert _message(lambda: fields.request_object([], ("x",), "v")) == "the request must be a JSON object"
    assert (
        _message(lambda: fields.request_object({"z": 1, "y": 2, "x": 3}, ("x", "w"), "kb_install"))
        == "unknown request keys y, z: kb_install accepts x, w"
    )
    data = {"x": 1}
    assert fields.request_object(data, ("x",), "v") is data


@pytest.mark.parametrize("bad", ["", 0, False, [], {}])
def test_an_optional_string_is_absent_or_non_empty(bad: object) -> None:
    assert fields.opt_str({}, "log_path") is None and fields.opt_str({"log_path": None}, "log_path") is None
    assert fields.opt_str({"log_path": "C:\\x.log"}, "log_path") == "C:\\x.log"
    assert _message(lambda: fields.opt_str({"log_path": bad}, "log_path")) == "log_path must be a non-empty string"


@pytest.mark.parametrize("bad", [0, 1, "true", None])
def test_a_flag_is_a_json_boolean(bad: object) -> None:
    assert fields.yes_no({}, "allow_unsigned", False) is False
    assert fields.yes_no({"allow_unsigned": True}, "allow_unsigned", False) is True
    assert _message(lambda: fields.yes_no({"allow_unsigned": bad}, "allow_unsigned", False)) == (
        "allow_unsigned must be true or false"
    )


@pytest.mark.parametrize("bad", [True, -1, 1001, 2.0, "5"])
def test_a_whole_number_is_an_integer_in_range_and_never_a_boolean(bad: object) -> None:
    assert fields.whole({}, "retries", 5, 0, 1000) == 5
    assert fields.whole({"retries": 1000}, "retries", 5, 0, 1000) == 1000
    assert _message(lambda: fields.whole({"retries": bad}, "retries", 5, 0, 1000)) == (
        "retries must be an integer from 0 to 1000"
    )


@pytest.mark.parametrize("bad", [True, 0, 0.5, 86401, "60"])
def test_seconds_are_an_int_or_float_in_range(bad: object) -> None:
    assert fields.seconds({}, "timeout_s", 7200, 1, 86400) == 7200.0
    assert fields.seconds({"timeout_s": 1.5}, "timeout_s", 7200, 1, 86400) == 1.5
    assert _message(lambda: fields.seconds({"timeout_s": bad}, "timeout_s", 7200, 1, 86400)) == (
        "timeout_s must be a number of seconds from 1 to 86400"
    )


@pytest.mark.parametrize("bad", ["C:\\Windows", [""], ["a", 1], None])
def test_strings_are_a_list_of_non_empty_strings(bad: object) -> None:
    assert fields.strings(["a", "b"], "m") == ("a", "b") and fields.strings([], "m") == ()
    assert _message(lambda: fields.strings(bad, "system_dirs must be a list")) == "system_dirs must be a list"


@given(value=JSON)
def test_both_parsers_word_a_bad_shared_field_alike(value: object) -> None:
    """log_path/state_dir (strings) and lock_timeout_s (seconds) are refused with the same words by either verb."""
    for key in ("state_dir", "lock_timeout_s"):
        outcomes = []
        for parse, base in ((parse_request, {}), (parse_kb_request, {"path": "C:\\kb.msu"})):
            verb = "status" if parse is parse_request else "kb_install"
            try:
                parse(verb, {**base, key: value})
                outcomes.append("ok")
            except RequestError as exc:
                outcomes.append(str(exc))
        assert outcomes[0] == outcomes[1], (key, value, outcomes)
