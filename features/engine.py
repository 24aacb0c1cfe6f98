"""One entry point for a curation step on either engine (``cfg.engine``: "local" or "spark")."""

from __future__ import annotations

from datetime import date
from typing import Literal

from features.config import CurationConfig
from features.pseudonymize import check_lake_key
from features.report import StageReport
from infra.settings import Settings
from infra.storage import storage_options
from infra.tables import table_uri

Stage = Literal["silver", "examples", "pairs"]
STAGES: tuple[Stage, ...] = ("silver", "examples", "pairs")


def curate(stage: Stage, settings: Settings, day: date, *, cfg: CurationConfig, key: bytes | None = None) -> StageReport:
    if cfg.engine == "spark":
        from features import pipeline_spark as engine
    else:
        from features import pipeline_local as engine  # type: ignore[no-redef]
    if stage == "silver":
        if key is None:
            raise ValueError("the silver step needs the pseudonymization key")
        silver, opts = table_uri(settings, "silver/feedback"), storage_options(settings)
        check_lake_key(silver, key, storage_options=opts)  # another key than the lake's: stop before writing
        rep = engine.curate_silver(settings, day, cfg=cfg, key=key)
        check_lake_key(silver, key, storage_options=opts)  # a new lake: record the key that made its first pseudonyms
        return rep
    if stage == "examples":
        return engine.curate_examples(settings, day, cfg=cfg)
    return engine.curate_pairs(settings, day, cfg=cfg)
