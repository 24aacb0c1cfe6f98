"""Checkpoints that survive a kill at any moment: written to a temp file, fsynced, renamed, then sealed
by a sidecar with size and SHA-256. A file that does not match its seal is rejected with a clear error."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from infra.errors import DataError

PREFIX = "ckpt-"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(folder: Path, step: int, state: dict[str, Any], *, keep: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{PREFIX}{step:08d}.pt"
    _atomic_write(path, lambda f: torch.save(state, f))
    seal = {"file": path.name, "bytes": path.stat().st_size, "sha256": _sha256(path), "step": step}
    _atomic_write(path.with_suffix(".json"), lambda f: f.write(json.dumps(seal).encode()))
    for old in sorted(folder.glob(f"{PREFIX}*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
        old.with_suffix(".json").unlink(missing_ok=True)
    return path


def latest_checkpoint(folder: Path) -> Path | None:
    found = sorted(folder.glob(f"{PREFIX}*.pt")) if folder.exists() else []
    return found[-1] if found else None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The state in ``path``, after checking it against its seal; truncated or corrupt -> DataError."""
    hint = f"delete {path.name} (and its .json) to resume from the previous checkpoint, or start a fresh output_dir"
    seal_path = path.with_suffix(".json")
    size = path.stat().st_size
    if seal_path.exists():
        seal = json.loads(seal_path.read_text())
        if size != seal["bytes"]:
            raise DataError(f"checkpoint {path} is truncated: {size} bytes on disk, {seal['bytes']} when written", hint=hint)
        if _sha256(path) != seal["sha256"]:
            raise DataError(f"checkpoint {path} is corrupt: its SHA-256 does not match the one recorded when written", hint=hint)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 -- torch raises RuntimeError/EOFError/UnpicklingError/zip errors on a cut file
        raise DataError(f"checkpoint {path} is truncated or unreadable ({type(exc).__name__}: {exc})", hint=hint) from None
