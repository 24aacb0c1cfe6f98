"""Counters of an ingestor run: periodic progress lines and the one-line summary at exit."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass
class IngestStats:
    stream: str
    topic: str
    started: float = field(default_factory=time.monotonic)
    records: int = 0  # consumed and flushed
    valid: int = 0  # rows written to the target table
    dead: int = 0  # rows written to dead_letters
    requests: int = 0  # erasure requests written to governance/erasure_requests
    skipped: int = 0  # rows another writer had already stored
    flushes: int = 0
    flush_reasons: dict[str, int] = field(default_factory=dict)
    rebalances: int = 0
    target_version: int | None = None
    dead_letters_version: int | None = None
    stored_offsets: dict[int, int | None] = field(default_factory=dict)
    first_record_at: float | None = None  # monotonic time the first record was taken
    finished_at: float | None = None  # monotonic time the last flush ended
    _last_tick: float = field(default_factory=time.monotonic)
    _last_records: int = 0

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    @property
    def sustained_rate(self) -> float:
        """Records per second from the first record taken to the last flush (start-up and group join excluded)."""
        if self.first_record_at is None or self.finished_at is None:
            return 0.0
        return self.records / max(self.finished_at - self.first_record_at, 1e-9)

    def progress_line(self, lag: Mapping[int, int | None], buffered: int) -> str:
        now = time.monotonic()
        rate = (self.records - self._last_records) / max(now - self._last_tick, 1e-9)
        self._last_tick, self._last_records = now, self.records
        lags = " ".join(f"p{p}={'?' if v is None else v}" for p, v in sorted(lag.items())) or "(no partitions assigned)"
        return (
            f"[{self.stream}] {rate:,.0f} events/s | written {self.valid:,} + {self.dead:,} dead letters"
            f" | buffered {buffered:,} | lag {lags}"
        )

    def summary_line(self) -> str:
        el = self.elapsed_s
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.flush_reasons.items())) or "none"
        return (
            f"ingested {self.records:,} records from {self.topic} in {el:.1f}s ({self.records / max(el, 1e-9):,.0f}/s): "
            f"{self.valid:,} rows, {self.dead:,} dead letters, "
            f"{f'{self.requests:,} erasure requests, ' if self.requests else ''}{self.skipped:,} already stored; "
            f"{self.flushes} flushes ({reasons}), {self.rebalances} rebalances; "
            f"table v{self.target_version}, dead_letters v{self.dead_letters_version}"
        )

    def as_dict(self) -> dict:
        return {
            "stream": self.stream, "topic": self.topic, "elapsed_s": round(self.elapsed_s, 3), "records": self.records,
            "valid": self.valid, "dead": self.dead, "requests": self.requests, "skipped": self.skipped, "flushes": self.flushes,
            "rebalances": self.rebalances, "target_version": self.target_version,
            "dead_letters_version": self.dead_letters_version,
            "stored_offsets": {str(k): v for k, v in sorted(self.stored_offsets.items())},
        }
