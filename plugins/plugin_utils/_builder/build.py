"""Internal to rebootless.windows: the patch builder's entry point, base + patched module -> hotpatch package.

Reads as its steps: load both images, correlate their symbols, select what changed (compare, entry checks,
refusals), relocate it into one blob, emit the package.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

from ...module_utils.hotpatch.package import Manifest, Refusal
from .correlate import correlate
from .deps import require
from .emit import emit, make_manifest
from .model import load_image
from .relocate import relocate
from .select import select

__all__ = ["BuildRefused", "BuildRequest", "BuildResult", "build"]


@dataclass(frozen=True)
class BuildRequest:
    """What to build. ``base`` / ``patched``: paths of the two builds of one module; ``base_map`` /
    ``patched_map``: optional linker /map files for builds without a COFF symbol table; ``module_name``: the
    file name the module is loaded as (default: the base file's name); ``cold_only_ok``: build a cold-only
    package instead of failing when something is refused."""

    base: str
    patched: str
    package_id: str
    version: str
    description: str = ""
    base_map: str | None = None
    patched_map: str | None = None
    module_name: str | None = None
    cold_only_ok: bool = False


@dataclass
class BuildResult:
    """A built package: ``manifest``, the package bytes in ``package`` and their ``sha256`` (hex);
    ``patched`` / ``new``: function names redirected / added; ``refused``: every refusal with its reason."""

    manifest: Manifest
    package: bytes = field(repr=False)
    sha256: str
    patched: list[str]
    new: list[str]
    refused: list[Refusal]

    @property
    def hotpatchable(self) -> bool:
        return self.manifest.hotpatchable


class BuildRefused(Exception):
    """Something in the patch cannot be hotpatched and a cold-only package was not allowed; ``refusals`` says
    what and why."""

    def __init__(self, refusals: list[Refusal]) -> None:
        self.refusals = refusals
        lines = "\n".join(f"- {r.function}: {r.reason}" for r in refusals)
        super().__init__(
            f"the patch cannot be hotpatched ({len(refusals)} refusal(s)); fix them or allow a cold-only "
            f"package (cold_only_ok, --cold-only-ok):\n{lines}"
        )


def build(request: BuildRequest) -> BuildResult:
    """Build the package in memory (write ``result.package`` where you want it). Raises ImageError when an
    input is not a PE image the builder understands and BuildRefused when refusals exist and
    ``request.cold_only_ok`` is false."""
    require()
    base = load_image(request.base, request.base_map, request.module_name)
    patched = load_image(request.patched, request.patched_map, request.module_name or base.name)
    pairs = correlate(base, patched)
    selection = select(base, patched, pairs)
    blob = relocate(base, patched, selection)
    refusals = selection.refusals + blob.refusals
    if not refusals and not selection.entries and (selection.new or selection.changed):
        refusals.append(
            Refusal(
                base.name,
                "the patch adds or changes only code no existing function entry leads to (new functions, "
                "out-of-line parts), so there is nothing to redirect in running processes; use the cold path",
            )
        )
    if refusals and not request.cold_only_ok:
        raise BuildRefused(refusals)
    manifest, members = make_manifest(
        base, patched, selection, blob, refusals, request.package_id, request.version, request.description
    )
    buffer = io.BytesIO()
    digest = emit(buffer, manifest, members)
    return BuildResult(
        manifest=manifest,
        package=buffer.getvalue(),
        sha256=digest,
        patched=[f.name for f in manifest.functions],
        new=[f.name for f in manifest.new_functions],
        refused=refusals,
    )
