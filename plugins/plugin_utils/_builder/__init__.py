"""Internal to rebootless.windows: the patch builder (controller only). Use ``build(BuildRequest(...))``."""

from __future__ import annotations

from .build import BuildRefused, BuildRequest, BuildResult, build

__all__ = ["BuildRefused", "BuildRequest", "BuildResult", "build"]
