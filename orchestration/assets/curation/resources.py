"""The curation resource: the curation config, and the pseudonymization key (a secret read from the environment at
run time, never a config field: a run's config cannot choose the key)."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from features.config import CurationConfig
from infra.errors import ConfigError
from infra.settings import Settings

KEY_ENV = "LAKELOOP_PSEUDONYM_KEY"


def dev_key_file(settings: Settings) -> Path:
    """Local-dev default key: ``<home>/secrets/pseudonym.key``, made on first use (never for production)."""
    return settings.home / "secrets" / "pseudonym.key"


class CurationResource(dg.ConfigurableResource):
    """Curation settings in a Dagster run. The key comes from ``LAKELOOP_PSEUDONYM_KEY`` in the run's environment
    (never from run config, never shown in the UI); without it, local dev uses a random key kept in
    ``<home>/secrets/pseudonym.key``, which ``LAKELOOP_ENV=production`` refuses."""

    engine: str | None = None  # "local" | "spark"; None: settings.engine (LAKELOOP_ENGINE). Checked by CurationConfig.
    user_cap: float = 0.1
    eval_fraction: float | None = None  # None: settings.curation_eval_fraction (LAKELOOP_CURATION_EVAL_FRACTION)
    min_silver_rows: int = 1
    min_training_rows: int = 10
    max_duplicate_rate: float = 0.02

    def config(self, settings: Settings | None = None) -> CurationConfig:
        engine = self.engine or (settings.engine if settings is not None else "local")
        fraction = self.eval_fraction if self.eval_fraction is not None else (settings.curation_eval_fraction if settings is not None else 0.1)
        if settings is None:
            return CurationConfig(engine=engine, user_cap=self.user_cap, eval_fraction=fraction)
        return CurationConfig(engine=engine, user_cap=self.user_cap, eval_fraction=fraction,
                              reference_wait_minutes=settings.reference_wait_minutes, signal_labels=settings.signal_labels,
                              pii_ner=settings.pii_ner)

    def key(self, settings: Settings) -> bytes:
        return pseudonym_key(settings)


def pseudonym_key(settings: Settings) -> bytes:
    """``LAKELOOP_PSEUDONYM_KEY`` as read now, else the dev key file (made on first use) outside production."""
    value = os.environ.get(KEY_ENV, "")
    if value:
        return value.encode("utf-8")
    if settings.deployment == "production":
        raise ConfigError(
            f"LAKELOOP_ENV=production and {KEY_ENV} is not set: production never uses the generated dev pseudonymization "
            f"key ({dev_key_file(settings)})",
            hint=f"set {KEY_ENV} to the lake's key (32+ random bytes from your secret store, the same for every process: "
            "`python -c 'import secrets; print(secrets.token_hex(32))'` for a new lake), or unset LAKELOOP_ENV for local dev")
    from features.pseudonymize import load_or_create_key

    return load_or_create_key(dev_key_file(settings))
