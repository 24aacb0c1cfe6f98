"""The one ``Definitions`` of lakeloop: every domain's assets, checks, jobs, sensors, and the resources.

Domains live in ``orchestration.assets.<domain>`` and each exposes ``defs``; resources are chosen here,
in one place. Nothing here does work at import time beyond building the definitions.
"""

from __future__ import annotations

import importlib

import dagster as dg

from orchestration.assets import platform
from orchestration.resources import LakeloopSettings

DOMAINS = ("feedback", "curation", "training", "monitoring", "governance")


def _domain_defs() -> list[dg.Definitions]:
    out = [platform.defs]
    for name in DOMAINS:
        try:
            module = importlib.import_module(f"orchestration.assets.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"orchestration.assets.{name}":
                continue  # domain not built yet
            raise
        out.append(module.defs)
    return out


def _redact_logs() -> None:
    """The code server and every run load these definitions: their log records lose the secrets (infra.secrets)."""
    from infra.errors import ConfigError
    from infra.secrets import install_log_redaction
    from infra.settings import load_settings

    try:
        install_log_redaction(load_settings())
    except ConfigError:
        install_log_redaction()


def build_definitions() -> dg.Definitions:
    _redact_logs()
    resources = {"lakeloop": LakeloopSettings()}
    resources["curation"] = importlib.import_module("orchestration.assets.curation.resources").CurationResource()
    resources["monitoring"] = importlib.import_module("orchestration.assets.monitoring.resources").monitoring_for_deployment()
    resources["ingest"] = importlib.import_module("orchestration.assets.feedback.resources").IngestResource()
    resources.update(importlib.import_module("orchestration.assets.training.resources").resources())
    return dg.Definitions.merge(*_domain_defs(), dg.Definitions(resources=resources))


defs = build_definitions()
