"""rebootless hotpatch engine: runs on managed hosts (stdlib + pefile), never imports Ansible."""

from __future__ import annotations

ENGINE_VERSION = "0.1.0"
