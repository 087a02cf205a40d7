"""Module documentation renders with ansible-doc and matches the action plugins' argument specs exactly.

This is the rule ansible-test's validate-modules applies (documented options == argument spec, same types,
defaults, choices, elements, required flags and suboptions), checked here against the docs as ansible-doc
resolves them (doc fragments included).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.rebootless.windows.plugins.action import win_hotpatch, win_hotpatch_facts

ROOT = Path(__file__).resolve().parents[3]
ANSIBLE_DOC = Path(sys.executable).parent / "ansible-doc"
MODULES = {"win_hotpatch": win_hotpatch.ARGUMENT_SPEC, "win_hotpatch_facts": win_hotpatch_facts.ARGUMENT_SPEC}


def ansible_doc(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=f"{ROOT / '.collections'}:{ROOT / '.cache' / 'collections'}")
    return subprocess.run([str(ANSIBLE_DOC), *args], capture_output=True, text=True, env=env, check=False)


@pytest.fixture(scope="module")
def docs() -> dict[str, Any]:
    done = ansible_doc("-j", *(f"rebootless.windows.{name}" for name in MODULES))
    assert done.returncode == 0, done.stderr
    return {
        name.split(".")[-1]: value["doc"] | {"return": value["return"]}
        for name, value in json.loads(done.stdout).items()
    }


def normalise_docs(options: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, option in options.items():
        entry = {
            "type": option.get("type", "str"),
            "default": option.get("default"),
            "choices": option.get("choices"),
            "elements": option.get("elements"),
            "required": bool(option.get("required", False)),
        }
        if "suboptions" in option:
            entry["options"] = normalise_docs(option["suboptions"])
        out[name] = entry
    return out


def normalise_spec(spec: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, option in spec.items():
        entry = {
            "type": option.get("type", "str"),
            "default": option.get("default"),
            "choices": option.get("choices"),
            "elements": option.get("elements"),
            "required": bool(option.get("required", False)),
        }
        if "options" in option:
            entry["options"] = normalise_spec(option["options"])
        out[name] = entry
    return out


@pytest.mark.parametrize("module", sorted(MODULES))
def test_documented_options_equal_the_argument_spec(docs: dict[str, Any], module: str) -> None:
    assert normalise_docs(docs[module]["options"]) == normalise_spec(MODULES[module])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_docs_declare_check_diff_and_platform_attributes_and_render_as_text(docs: dict[str, Any], module: str) -> None:
    attributes = docs[module]["attributes"]
    assert {"check_mode", "diff_mode", "platform"} <= set(attributes)
    assert attributes["platform"]["platforms"] == "windows"
    text = ansible_doc(f"rebootless.windows.{module}")
    assert text.returncode == 0 and "EXAMPLES" in text.stdout and "RETURN VALUES" in text.stdout, text.stderr


def test_every_key_win_hotpatch_returns_is_documented(docs: dict[str, Any]) -> None:
    from ansible_collections.rebootless.windows.plugins.plugin_utils._action_base import EngineReply
    from ansible_collections.rebootless.windows.tests.unit.plugins.action_harness import (
        reply,
    )  # the protocol's result shape

    action = win_hotpatch.ActionModule.__new__(win_hotpatch.ActionModule)
    action._task = type("T", (), {"diff": False, "check_mode": False})()
    process = {"pid": 1, "name": "a.exe", "result": "patched"}
    params = {"state": "present"}
    shaped = action.shape(params, EngineReply("apply", 0, json.loads(reply("apply", processes=[process]))), None)
    documented = set(docs["win_hotpatch"]["return"])
    assert set(shaped) - {"changed", "diff"} <= documented  # common return values are not documented per module
    assert set(shaped["processes"][0]) <= set(docs["win_hotpatch"]["return"]["processes"]["contains"])
    assert "engine_rc" in documented
