"""A ``LakeloopSettings`` resource pinned to a test's home and lake, for in-process runs of assets and jobs.

The product's resource has no config fields (a run's config may not choose paths); tests that run several homes
in one process pin theirs with this subclass, which never appears in ``Definitions``."""

from __future__ import annotations

from infra.settings import Settings, load_settings
from orchestration.resources import LakeloopSettings


class PinnedSettings(LakeloopSettings):
    home: str | None = None
    lake_root: str | None = None

    def load(self) -> Settings:
        return load_settings(home=self.home, lake_root=self.lake_root)
