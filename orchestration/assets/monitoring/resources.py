"""The monitoring domain's resource: window size, where windows are read from, and sampling."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Literal

import dagster as dg

from infra.errors import ConfigError


class MonitoringResource(dg.ConfigurableResource):
    """How drift and canary windows are taken. Alert channels and thresholds come from Settings."""

    window_minutes: int = 60
    source: Literal["lake", "kafka"] = "lake"  # lake: bronze tables; kafka: the topics (fresher)
    embed_sample: int = 256  # rows per window embedded with all-MiniLM-L6-v2 (0 disables embedding drift)
    reference_sample: int = 5000  # rows of the training set used as drift reference
    apply_rollout: bool = True  # False: decide and report only, never move aliases


def monitoring_for_deployment() -> MonitoringResource:
    """Window sizes and sampling as the settings say (read when the definitions load)."""
    from infra.settings import load_settings

    try:
        s = load_settings()
    except ConfigError:
        return MonitoringResource()
    return MonitoringResource(window_minutes=max(1, round(s.drift_window_minutes)), reference_sample=s.drift_reference_sample)


class WindowConfig(dg.Config):
    """Run config of a monitoring run: an explicit window (ISO 8601), else the last `window_minutes`."""

    since: str | None = None
    until: str | None = None

    def window(self, minutes: int) -> tuple[datetime, datetime]:
        until = datetime.fromisoformat(self.until) if self.until else datetime.now(timezone.utc)
        since = datetime.fromisoformat(self.since) if self.since else until - timedelta(minutes=minutes)
        if since >= until:
            raise ConfigError(f"window start {since} is not before its end {until}", hint="pass since < until (ISO 8601)")
        return since, until
