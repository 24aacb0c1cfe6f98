"""API keys of lakeloop's HTTP services (the collector, the scoring service): settings hold only their SHA-256
hashes, each optionally scoped to one app_id.

An entry is ``sha256:<64 hex digits>`` or ``sha256:<hex>@<app_id>``; ``LAKELOOP_COLLECTOR_API_KEYS`` and
``LAKELOOP_SERVE_API_KEYS`` hold them comma-separated. The same key may appear with several app_ids (it may send for each of them); without
``@app_id`` it may send for any app. Keys are random (``new_key``: 256 bits), so a plain SHA-256 suffices:
there is nothing to guess from a hash. A key travels as ``Authorization: Bearer <key>``.

Without any entry no key is needed, which ``require_keys_beyond_loopback`` allows only on a loopback address.
Loopback here is 127.0.0.1, ::1 and localhost only: another 127.x address counts as beyond loopback (stricter than
the kernel, never in the unsafe direction, and it lets tests exercise the beyond-loopback path on 127.0.0.2).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import secrets
from dataclasses import dataclass, field

from infra.errors import ConfigError

KEY_PREFIX = "llk_"
_ENTRY = re.compile(r"sha256:([0-9a-f]{64})(?:@(.{1,256}))?")


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the app_ids it may send events for (None: any)."""

    app_ids: frozenset[str] | None = None

    def may_send_for(self, app_id: str) -> bool:
        return self.app_ids is None or app_id in self.app_ids


@dataclass(frozen=True)
class ApiKeys:
    """Key hash (hex) -> the apps that key may send for (None: any)."""

    scopes: dict[str, frozenset[str] | None] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.scopes)

    def caller(self, authorization: str | None) -> Caller | None:
        """The caller of a request with this ``Authorization`` header, or None when it must be refused (401).

        With no keys configured every request is an unscoped caller, key or not.
        """
        if not self.scopes:
            return Caller()
        key = bearer_token(authorization)
        if key is None:
            return None
        digest = key_hash(key)
        for known, apps in self.scopes.items():
            if secrets.compare_digest(known, digest):
                return Caller(apps)
        return None


def new_key() -> str:
    """A fresh random API key (256 bits, URL-safe)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_entry(key: str, app_id: str | None = None) -> str:
    """The settings entry of ``key``: ``sha256:<hex>``, with ``@app_id`` when scoped."""
    return f"sha256:{key_hash(key)}" + (f"@{app_id}" if app_id else "")


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def parse_keys(text: str, *, setting: str = "LAKELOOP_COLLECTOR_API_KEYS") -> ApiKeys:
    """Parse the key entries of ``setting``; ConfigError naming the position of a malformed entry."""
    scopes: dict[str, frozenset[str] | None] = {}
    entries = [e.strip() for e in text.split(",") if e.strip()]
    for n, entry in enumerate(entries, 1):
        match = _ENTRY.fullmatch(entry)
        if match is None:
            raise ConfigError(
                f"{setting}: entry {n} of {len(entries)} is not `sha256:<64 lowercase hex>[@app_id]`",
                hint="settings hold key hashes, never keys: `lakeloop collector new-key [--app-id APP]` prints a key "
                     "and its entry (`lakeloop collector hash-key` for an existing key)",
            )
        digest, app = match.group(1), match.group(2)
        known = scopes.get(digest, frozenset())
        # unscoped anywhere wins: that key may send for any app
        scopes[digest] = None if app is None or known is None else known | {app}
    return ApiKeys(scopes)


LOOPBACK = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))


def is_loopback(host: str) -> bool:
    """``host`` (an address to bind) is lakeloop's loopback: 127.0.0.1, ::1 or localhost. Any other address, 127.0.0.2
    included, is beyond loopback and needs credentials (see the module's docstring)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")) in LOOPBACK
    except ValueError:
        return False  # a host name other than localhost: it may resolve beyond loopback


def missing_keys(host: str, keys: ApiKeys, *, service: str = "the collector", does: str = "write feedback",
                 setting: str = "LAKELOOP_COLLECTOR_API_KEYS", host_setting: str = "LAKELOOP_COLLECTOR_HOST",
                 ) -> ConfigError | None:
    """The ConfigError for ``service`` listening on ``host`` beyond loopback without API keys, else None."""
    if keys or is_loopback(host):
        return None
    return ConfigError(
        f"{service} would listen on {host}, beyond loopback, without API keys: anyone who reaches it could {does}",
        hint=f"create a key with `lakeloop collector new-key [--app-id APP]` and set {setting} to the printed "
             f"sha256:... entry, or bind loopback ({host_setting}=127.0.0.1)",
    )


def require_keys_beyond_loopback(host: str, keys: ApiKeys, **names: str) -> None:
    """ConfigError when a service would listen beyond loopback without API keys (``missing_keys``)."""
    error = missing_keys(host, keys, **names)
    if error is not None:
        raise error
