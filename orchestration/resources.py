"""Dagster resources: typed ``ConfigurableResource``s, picked per deployment in ``definitions.py``."""

from __future__ import annotations

import dagster as dg

from infra.settings import Settings, load_settings


class LakeloopSettings(dg.ConfigurableResource):
    """lakeloop's settings inside a Dagster run. Empty fields fall back to LAKELOOP_* env vars, read at run time."""

    home: str | None = None
    lake_root: str | None = None

    def load(self) -> Settings:
        return load_settings(home=self.home, lake_root=self.lake_root)
