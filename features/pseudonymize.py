"""Keyed pseudonyms for user ids: HMAC-SHA256 under a secret key that the caller passes in.

The same key gives the same pseudonym in every run and engine (so per-user caps and joins still work);
without the key the original id cannot be recovered or confirmed by hashing guesses.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

MIN_KEY_BYTES = 16


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
