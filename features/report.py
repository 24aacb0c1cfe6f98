"""What a curation step reports: counts, drops by reason, PII found, versions and content hashes."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date


@dataclass
class StageReport:
    table: str
    day: date
    engine: str
    rows_in: int = 0
    rows_out: int = 0
    drops: Counter[str] = field(default_factory=Counter)
    pii: Counter[str] = field(default_factory=Counter)
    version: int | None = None
    skipped: bool = False  # re-run of a finished partition: nothing committed
    partition_hash: str = ""
    content_hash: str = ""
    uri: str = ""
    stats: dict[str, int] = field(default_factory=dict)
    retracted: int = 0
    retries: int = 0
    seconds: float = 0.0

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())
