"""The collector's API keys: the shared module ``infra.api_keys`` (the scoring service uses it too)."""

from infra.api_keys import (  # noqa: F401 - re-exported
    KEY_PREFIX,
    ApiKeys,
    Caller,
    bearer_token,
    is_loopback,
    key_entry,
    key_hash,
    new_key,
    parse_keys,
    require_keys_beyond_loopback,
)
