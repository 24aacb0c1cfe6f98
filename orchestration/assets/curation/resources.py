"""The curation resource: the pseudonymization key (a secret, from ``dg.EnvVar``) and the curation config."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from features.config import CurationConfig
from infra.settings import Settings

KEY_ENV = "LAKELOOP_PSEUDONYM_KEY"


def dev_key_file(settings: Settings) -> Path:
    """Local-dev default key: ``<home>/secrets/pseudonym.key``, made on first use (never for production)."""
    return settings.home / "secrets" / "pseudonym.key"


class CurationResource(dg.ConfigurableResource):
    """Curation settings in a Dagster run. The key comes from ``LAKELOOP_PSEUDONYM_KEY`` (resolved at run time,
    hidden in the UI); without it, local dev uses a random key kept in ``<home>/secrets/pseudonym.key``."""

    pseudonym_key: str | None = None
    engine: str | None = None  # "local" | "spark"; None: settings.engine (LAKELOOP_ENGINE). Checked by CurationConfig.
    user_cap: float = 0.1
    eval_fraction: float | None = None  # None: settings.curation_eval_fraction (LAKELOOP_CURATION_EVAL_FRACTION)
    min_silver_rows: int = 1
    min_training_rows: int = 10
    max_duplicate_rate: float = 0.02

    @classmethod
    def for_deployment(cls) -> "CurationResource":
        """With the env var set, wire it as a ``dg.EnvVar`` (value read by Dagster at run time); else the dev default."""
        return cls(pseudonym_key=dg.EnvVar(KEY_ENV)) if KEY_ENV in os.environ else cls()

    def config(self, settings: Settings | None = None) -> CurationConfig:
        engine = self.engine or (settings.engine if settings is not None else "local")
        fraction = self.eval_fraction if self.eval_fraction is not None else (settings.curation_eval_fraction if settings is not None else 0.1)
        if settings is None:
            return CurationConfig(engine=engine, user_cap=self.user_cap, eval_fraction=fraction)
        return CurationConfig(engine=engine, user_cap=self.user_cap, eval_fraction=fraction,
                              reference_wait_minutes=settings.reference_wait_minutes, signal_labels=settings.signal_labels,
                              pii_ner=settings.pii_ner)

    def key(self, settings: Settings) -> bytes:
        if self.pseudonym_key:
            return self.pseudonym_key.encode("utf-8")
        from features.pseudonymize import load_or_create_key

        return load_or_create_key(dev_key_file(settings))
