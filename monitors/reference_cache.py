"""The drift reference of a champion, built once and kept on disk.

A drift check compares each window with the champion's pinned training data scored by the champion (a model load,
hundreds of rows scored and embedded: most of a check's CPU). The registered version and its pinned gold versions
never change, so the prepared reference is a function of (model, version, sizes): it is pickled under
``<home>/cache/drift-reference/`` on first use and read back by every later check of the same champion. The files
are lakeloop's own (never user input); a file that cannot be read is rebuilt.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from infra.settings import Settings
    from monitors.drift_job import Reference

log = logging.getLogger(__name__)


def path_for(settings: Settings, version: str, *, sample: int, embed_sample: int) -> Path:
    name = f"{settings.registered_model_name}-v{version}-s{sample}-e{embed_sample}.pkl"
    return settings.home / "cache" / "drift-reference" / name


def cached_reference(settings: Settings, version: str, *, sample: int, embed_sample: int,
                     build: Callable[[], Reference]) -> tuple[Reference, bool]:
    """(the reference, whether it came from the cache)."""
    path = path_for(settings, version, sample=sample, embed_sample=embed_sample)
    if path.exists():
        try:
            with path.open("rb") as f:
                return pickle.load(f), True  # noqa: S301 - written by this module, under the platform's home
        except Exception as exc:  # noqa: BLE001 - a torn or stale file: rebuild it
            log.warning("drift reference cache %s unreadable (%s): rebuilding it", path, exc)
    reference = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with tmp.open("wb") as f:
        pickle.dump(reference, f, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(path)  # atomic: a concurrent check reads the old file or the whole new one
    return reference, False
