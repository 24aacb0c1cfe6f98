"""What every command shares: the settings (read once per process) and console output."""

from __future__ import annotations

import functools
from typing import Any

from rich.console import Console

from infra.settings import Settings, load_settings

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


@functools.cache
def settings(**flags: Any) -> Settings:
    """The settings of this CLI invocation: command flags (``None``: not given), then env vars and
    lakeloop.toml (global flags set env first)."""
    return load_settings(**flags)


def say(msg: str) -> None:
    console.print(msg)
