"""Checkpoints that survive a kill at any moment and load without running code: written to a temp file, fsynced,
renamed, then sealed by a sidecar with size, SHA-256 and an HMAC-SHA256 of the bytes under the checkpoint key
(``checkpoint_key``). Loading checks the seal first (a file that does not match is rejected with a clear error) and
then reads with ``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary pickled objects.
So the state must be tensors, numbers, strings, lists, tuples and dicts (``trainers.train`` turns the RNG states
into those)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

import torch

from infra.errors import DataError
from infra.settings import Settings

PREFIX = "ckpt-"
KEY_ENV = "LAKELOOP_CHECKPOINT_KEY"  # the checkpoint key in production (a secret); else the dev key file


def key_file(settings: Settings) -> Path:
    """Local-dev default key: ``<home>/secrets/checkpoint.key``, made on first use (never for production)."""
    return settings.home / "secrets" / "checkpoint.key"


def checkpoint_key(settings: Settings) -> bytes:
    """The key that seals checkpoints: ``LAKELOOP_CHECKPOINT_KEY`` (read now, not at import), else the dev key file."""
    if os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV].encode("utf-8")
    if settings.deployment == "production":
        from infra.errors import ConfigError

        raise ConfigError(f"LAKELOOP_ENV=production and {KEY_ENV} is not set: production never uses the generated dev "
                          f"checkpoint key ({key_file(settings)})",
                          hint=f"set {KEY_ENV} (32+ random bytes from your secret store, the same wherever a run may resume)")
    from features.pseudonymize import load_or_create_key

    return load_or_create_key(key_file(settings), what="checkpoint key")


def _digests(path: Path, key: bytes) -> tuple[str, str]:
    """(SHA-256, HMAC-SHA256 under ``key``) of the file's bytes, in one read."""
    h, mac = hashlib.sha256(), hmac.new(key, digestmod=hashlib.sha256)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            mac.update(block)
    return h.hexdigest(), mac.hexdigest()


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(folder: Path, step: int, state: dict[str, Any], *, key: bytes, keep: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{PREFIX}{step:08d}.pt"
    _atomic_write(path, lambda f: torch.save(state, f))
    sha, mac = _digests(path, key)
    seal = {"file": path.name, "bytes": path.stat().st_size, "sha256": sha, "hmac_sha256": mac, "step": step}
    _atomic_write(path.with_suffix(".json"), lambda f: f.write(json.dumps(seal).encode()))
    for old in sorted(folder.glob(f"{PREFIX}*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
        old.with_suffix(".json").unlink(missing_ok=True)
    return path


def latest_checkpoint(folder: Path) -> Path | None:
    found = sorted(folder.glob(f"{PREFIX}*.pt")) if folder.exists() else []
    return found[-1] if found else None


def load_checkpoint(path: Path, *, key: bytes) -> dict[str, Any]:
    """The state in ``path``, after checking it against its seal; truncated, corrupt, unsealed or sealed under
    another key -> DataError (nothing of the file is read as a pickle before the seal matched)."""
    hint = f"delete {path.name} (and its .json) to resume from the previous checkpoint, or start a fresh output_dir"
    seal_path = path.with_suffix(".json")
    size = path.stat().st_size
    if not seal_path.exists():
        raise DataError(f"checkpoint {path} has no seal ({seal_path.name}): it is not loaded", hint=hint)
    seal = json.loads(seal_path.read_text())
    if size != seal["bytes"]:
        raise DataError(f"checkpoint {path} is truncated: {size} bytes on disk, {seal['bytes']} when written", hint=hint)
    sha, mac = _digests(path, key)
    if sha != seal["sha256"]:
        raise DataError(f"checkpoint {path} is corrupt: its SHA-256 does not match the one recorded when written", hint=hint)
    if "hmac_sha256" not in seal or not hmac.compare_digest(mac, str(seal["hmac_sha256"])):
        why = "carries no keyed seal (written before checkpoints were sealed)" if "hmac_sha256" not in seal else \
            "was not sealed with this platform's checkpoint key (changed by someone without the key, or the key changed)"
        raise DataError(f"checkpoint {path} {why}: it is not loaded",
                        hint=f"{hint}; if the key changed, restore it ({KEY_ENV} or <home>/secrets/checkpoint.key)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- torch raises RuntimeError/EOFError/UnpicklingError/zip errors on a cut or non-tensor file
        raise DataError(f"checkpoint {path} is truncated or unreadable ({type(exc).__name__}: {exc})", hint=hint) from None
