"""Checks of request-document fields shared by every engine verb (host/request.py, osupdate/kb.py).

Each helper reads one key of the decoded JSON object (or checks the object itself) and raises RequestError with
the wording the engine has always used, so a bad request reads the same whichever verb refused it.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

from .errors import RequestError

__all__ = ["known_verb", "opt_str", "request_object", "seconds", "strings", "whole", "yes_no"]


def known_verb(verb: str, verbs: Sequence[str]) -> None:
    """Raises RequestError naming the accepted verbs when ``verb`` is not one of ``verbs``."""
    if verb not in verbs:
        raise RequestError(f"unknown verb {verb!r}: use one of {', '.join(verbs)}")


def request_object(data: Any, keys: Sequence[str], accepted_by: str) -> Dict[str, Any]:
    """``data`` as a dict; raises RequestError when it is not a JSON object or has a key outside ``keys``
    (the message says "``accepted_by`` accepts" and lists them, e.g. "the engine" or a verb's name)."""
    if not isinstance(data, dict):
        raise RequestError("the request must be a JSON object")
    unknown = sorted(set(data) - set(keys))
    if unknown:
        raise RequestError(f"unknown request keys {', '.join(unknown)}: {accepted_by} accepts {', '.join(keys)}")
    return data


def opt_str(data: Dict[str, Any], key: str) -> Optional[str]:
    """The string at ``key``, None when absent or null; raises RequestError when it is empty or not a string."""
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise RequestError(f"{key} must be a non-empty string")
    return value


def yes_no(data: Dict[str, Any], key: str, default: bool) -> bool:
    """The JSON boolean at ``key`` (``default`` when absent); raises RequestError for anything else."""
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise RequestError(f"{key} must be true or false")
    return value


def whole(data: Dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    """The integer at ``key`` within [low, high] (``default`` when absent); booleans are refused."""
    value = data.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise RequestError(f"{key} must be an integer from {low} to {high}")
    return value


def seconds(data: Dict[str, Any], key: str, default: float, low: int, high: int) -> float:
    """A duration in seconds (int or float) at ``key`` within [low, high], as float; booleans are refused."""
    value = data.get(key, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
        raise RequestError(f"{key} must be a number of seconds from {low} to {high}")
    return float(value)


def strings(value: Any, message: str) -> Tuple[str, ...]:
    """``value`` as a tuple of non-empty strings; raises RequestError(``message``) unless it is such a list."""
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise RequestError(message)
    return tuple(value)
