"""What every command shares: the settings (read once per process) and console output."""

from __future__ import annotations

import functools
import os
from typing import Any

from rich.console import Console

from infra.mlflow_auth import use_credentials
from infra.settings import Settings, load_settings

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


@functools.cache
def settings(**flags: Any) -> Settings:
    """The settings of this CLI invocation: command flags (``None``: not given), then env vars and
    lakeloop.toml (global flags set env first). This process's MLflow clients use lakeloop's MLflow user."""
    s = load_settings(**flags)
    use_credentials(s)
    return s


def say(msg: str) -> None:
    console.print(msg, soft_wrap=True)  # one line per message: a log or a pipe is not cut at 80 columns (a terminal wraps by itself)


# Libraries that draw progress bars or print links on stdout (MLflow artifact downloads, "View run at", model weight
# loading): every command turns them off for itself and the processes it starts (the CLI's root callback), unless the
# user set them already.
QUIET_ENV = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
             "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"}


def quiet_third_party_output() -> None:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
