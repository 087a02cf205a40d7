"""Controller side of ``rebootless.windows.hotpatch_build``: run the patch builder in-process and write the package.

Nothing reaches a managed host. ``changed`` is true when ``dest`` did not exist or held other bytes; in check mode
the package is built in memory and compared, never written.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.errors import EngineError
from ansible_collections.rebootless.windows.plugins.plugin_utils._builder import BuildRefused, BuildRequest, build

__all__ = ["ActionModule"]


class ActionModule(ActionBase):
    """Builds base + patched into a hotpatch package on the controller (see the module's documentation)."""

    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(
        (
            "base",
            "patched",
            "dest",
            "package_id",
            "version",
            "description",
            "base_map",
            "patched_map",
            "module_name",
            "cold_only_ok",
        )
    )
    _SPEC: dict[str, Any] = {  # noqa: RUF012 - read-only spec, the shape ActionBase expects
        "base": {"type": "path", "required": True},
        "patched": {"type": "path", "required": True},
        "dest": {"type": "path", "required": True},
        "package_id": {"type": "str", "required": True},
        "version": {"type": "str", "required": True},
        "description": {"type": "str", "default": ""},
        "base_map": {"type": "path", "aliases": ["base_symbols"]},
        "patched_map": {"type": "path", "aliases": ["patched_symbols"]},
        "module_name": {"type": "str"},
        "cold_only_ok": {"type": "bool", "default": False},
    }

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = super().run(tmp, task_vars or {})
        _validation, args = self.validate_argument_spec(argument_spec=self._SPEC)
        request = BuildRequest(
            base=args["base"],
            patched=args["patched"],
            package_id=args["package_id"],
            version=args["version"],
            description=args["description"],
            base_map=args["base_map"],
            patched_map=args["patched_map"],
            module_name=args["module_name"],
            cold_only_ok=args["cold_only_ok"],
        )
        try:
            built = build(request)
        except BuildRefused as exc:
            result.update(
                failed=True,
                changed=False,
                msg=str(exc),
                refused=[{"function": r.function, "reason": r.reason} for r in exc.refusals],
                hotpatchable=False,
            )
            return result
        except EngineError as exc:
            raise AnsibleActionFail(f"hotpatch_build: {exc}") from exc
        dest = args["dest"]
        before = _sha256_of(dest)
        changed = before != built.sha256
        if changed and not self._task.check_mode:
            _write_atomically(dest, built.package)
        result.update(
            changed=changed,
            dest=dest,
            sha256=built.sha256,
            hotpatchable=built.hotpatchable,
            patched=built.patched,
            new=built.new,
            refused=[{"function": r.function, "reason": r.reason} for r in built.refused],
            package_id=built.manifest.package_id,
            version=built.manifest.version,
            module=built.manifest.module,
        )
        if self._task.diff:
            result["diff"] = {
                "before": f"{dest}: sha256 {before}\n" if before else "",
                "after": f"{dest}: sha256 {built.sha256}\n",
            }
        return result


def _sha256_of(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AnsibleActionFail(f"hotpatch_build: cannot read existing {path}: {exc.strerror}") from exc


def _write_atomically(path: str, data: bytes) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".hotpatch-build-", dir=folder)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        raise AnsibleActionFail(
            f"hotpatch_build: cannot write {path}: {exc.strerror}; check the folder exists and is writable"
        ) from exc
