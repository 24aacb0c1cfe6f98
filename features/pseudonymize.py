"""Keyed pseudonyms for user ids: HMAC-SHA256 under a secret key that the caller passes in.

The same key gives the same pseudonym in every run and engine (so per-user caps and joins still work);
without the key the original id cannot be recovered or confirmed by hashing guesses.

The key's fingerprint (scrypt of the key: names it without revealing it) is stored in the lake, as a table
property of ``silver/feedback``; a silver step whose key has another fingerprint refuses to start
(``check_lake_key``), because every pseudonym it wrote would silently differ from the lake's.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from infra.errors import ConfigError

MIN_KEY_BYTES = 16
FINGERPRINT_PROPERTY = "lakeloop.pseudonym_key.fingerprint"
KeyState = Literal["matches", "recorded", "no table yet"]


class KeyMismatchError(ConfigError):
    """The pseudonymization key is not the one the lake's pseudonyms were made with."""


def check_key(key: bytes) -> bytes:
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the pseudonymization key must have at least {MIN_KEY_BYTES} bytes, got {len(key)}")
    return key


def pseudonymize(user_id: str | None, key: bytes) -> str | None:
    if user_id is None:
        return None
    return "u_" + hmac.new(key, user_id.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def pseudonymize_many(user_ids: Iterable[str | None], key: bytes) -> list[str | None]:
    check_key(key)
    cache: dict[str | None, str | None] = {}
    out = []
    for u in user_ids:
        if u not in cache:
            cache[u] = pseudonymize(u, key)
        out.append(cache[u])
    return out


def fingerprint(key: bytes) -> str:
    """A short public name of the key. scrypt (about 50 ms) so that a weak key cannot be guessed from it quickly."""
    digest = hashlib.scrypt(check_key(key), salt=b"lakeloop pseudonym key fingerprint v1", n=2**14, r=8, p=1, dklen=16)
    return "scrypt1:" + digest.hex()


# ---- the key file (local dev) --------------------------------------------------------------------------
def load_or_create_key(path: Path, *, what: str = "pseudonymization key") -> bytes:
    """The key kept in ``path``, made on first use: 32 random bytes (hex), mode 0600, created atomically (a
    concurrent first use gets the same key, and no reader ever sees a partial or world-readable file)."""
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_hex(32).encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # create-if-absent in one step: when two processes race, the first key wins for both
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(f"the {what} {path} can be read by other users (mode {mode:o})", hint=f"chmod 600 {path}")
    key = path.read_text().strip().encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"the {what} {path} holds {len(key)} bytes, fewer than {MIN_KEY_BYTES}",
                          hint="restore the key file from your backup (it made the lake's pseudonyms); never edit it")
    return key


# ---- the fingerprint in the lake ------------------------------------------------------------------------
def check_lake_key(silver_uri: str, key: bytes, *, storage_options: dict[str, str] | None = None) -> KeyState:
    """Compare the key's fingerprint with the one ``silver/feedback`` records; record it there if none is yet.

    Raises ``KeyMismatchError`` (nothing written) when they differ."""
    from deltalake import DeltaTable
    from deltalake.exceptions import CommitFailedError

    if not DeltaTable.is_deltatable(silver_uri, storage_options=storage_options):
        return "no table yet"
    mine = fingerprint(key)
    for attempt in range(5):
        dt = DeltaTable(silver_uri, storage_options=storage_options)
        recorded = dt.metadata().configuration.get(FINGERPRINT_PROPERTY)
        if recorded is not None:
            break
        try:
            dt.alter.set_table_properties({FINGERPRINT_PROPERTY: mine}, raise_if_not_exists=False)
            return "recorded"
        except CommitFailedError:  # a concurrent writer committed first: read again (it may have recorded a key)
            if attempt == 4:
                raise
    if recorded != mine:
        raise KeyMismatchError(
            f"the pseudonymization key (fingerprint {mine}) is not the key this lake's pseudonyms were made with "
            f"({recorded}, recorded in the table properties of {silver_uri}); with it every user would get a new "
            "pseudonym, splitting their old and new feedback (per-user caps, joins, erasure by user), so the run stopped "
            "before writing anything",
            hint="use the original key again (LAKELOOP_PSEUDONYM_KEY, or restore <home>/secrets/pseudonym.key); to change "
            "the key on purpose, delete silver/feedback, silver/minhash_index and the gold tables and re-curate every day "
            "with the new key (`lakeloop curate`)")
    return "matches"
