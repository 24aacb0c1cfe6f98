"""Dagster resources: typed ``ConfigurableResource``s, picked per deployment in ``definitions.py``."""

from __future__ import annotations

import dagster as dg

from infra.settings import Settings, load_settings


class LakeloopSettings(dg.ConfigurableResource):
    """lakeloop's settings inside a Dagster run, read at run time from LAKELOOP_* env vars and lakeloop.toml.

    It has no config fields on purpose: a run's config (which anyone who can launch a run writes) can never point
    a run at other paths, another lake or another key (docs/SECURITY.md)."""

    def load(self) -> Settings:
        return load_settings()
