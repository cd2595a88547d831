"""Upstream URLs and a config file shape the config tests share."""

from __future__ import annotations

from typing import Any

LOCAL = "http://127.0.0.1:8080"
ANTHROPIC = "https://api.anthropic.com"


def local_file(**server: Any) -> dict[str, Any]:
    """A config file with one local upstream and these ``[server]`` keys."""
    return {"server": server, "upstreams": {"local": {"url": LOCAL}}}
