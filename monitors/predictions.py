"""The prediction record contract and our one wrapper of Kafka for it (publish, and read a time range back).

Each prediction goes to ``settings.predictions_topic`` as JSON, keyed by conversation id; the ingestor
lands the topic in bronze/predictions. Canary analysis can read the window straight from the topic (fresh)
or from the lake (durable): both give the same columns.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Literal

import pandas as pd

from infra.errors import ServiceError
from infra.settings import Settings

ServedAlias = Literal["champion", "canary"]
COLUMNS = (
    "request_id", "response_id", "conversation_id", "model_name", "model_version", "alias",
    "score", "latency_ms", "prompt", "response", "served_at",
)


@dataclass(frozen=True)
class PredictionRecord:
    request_id: str
    response_id: str
    conversation_id: str
    model_name: str
    model_version: str
    alias: ServedAlias
    score: float
    latency_ms: float
    prompt: str
    response: str
    served_at: str  # RFC 3339, UTC

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), ensure_ascii=False).encode("utf-8")


def rfc3339_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


class KafkaPublisher:
    """Fire-and-forget publishing with delivery accounting (sent / failed), never blocking a request."""

    def __init__(self, settings: Settings, *, linger_ms: int = 5) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        self.topic = settings.predictions_topic
        try:
            self._producer = KafkaProducer(
                bootstrap_servers=settings.bootstrap_servers, linger_ms=linger_ms, acks="all",
                key_serializer=lambda k: k.encode("utf-8"),
            )
        except KafkaError as exc:
            raise ServiceError(
                f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}", hint="start the broker with `lakeloop up`"
            ) from exc
        self._lock = threading.Lock()
        self.sent = 0
        self.failed = 0
        self.last_error: str | None = None

    def _ok(self, _: Any) -> None:
        with self._lock:
            self.sent += 1

    def _err(self, exc: BaseException) -> None:
        with self._lock:
            self.failed += 1
            self.last_error = str(exc)

    def publish(self, record: PredictionRecord) -> None:
        future = self._producer.send(self.topic, key=record.conversation_id, value=record.to_json())
        future.add_callback(self._ok).add_errback(self._err)

    def flush(self, timeout: float = 10.0) -> None:
        self._producer.flush(timeout=timeout)

    def close(self) -> None:
        self._producer.close(timeout=5)


def read_topic(settings: Settings, topic: str, *, since: datetime, until: datetime, timeout_s: float = 20.0) -> list[dict[str, Any]]:
    """JSON records of ``topic`` whose Kafka timestamp is in [since, until), from every partition."""
    import time

    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False, consumer_timeout_ms=1000)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        consumer.assign(tps)
        start_ms, end_ms = int(since.timestamp() * 1000), int(until.timestamp() * 1000)
        starts = consumer.offsets_for_times({tp: start_ms for tp in tps})
        ends = consumer.end_offsets(tps)
        pending = {}
        for tp in tps:
            found = starts.get(tp)
            if found is None or found.offset >= ends[tp]:
                continue
            consumer.seek(tp, found.offset)
            pending[tp] = ends[tp]
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            for tp, msgs in consumer.poll(timeout_ms=500, max_records=5000).items():
                for m in msgs:
                    if m.offset >= pending.get(tp, -1):
                        continue
                    if start_ms <= m.timestamp < end_ms:
                        out.append(json.loads(m.value))
                if consumer.position(tp) >= pending.get(tp, 0):
                    pending.pop(tp, None)
        if pending:
            raise ServiceError(f"reading {topic} timed out with {len(pending)} partitions unfinished", hint="is the broker healthy?")
        return out
    finally:
        consumer.close()


def predictions_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame.from_records(records, columns=list(COLUMNS))
    df["score"] = pd.to_numeric(df["score"], errors="coerce")
    df["latency_ms"] = pd.to_numeric(df["latency_ms"], errors="coerce")
    df["model_version"] = df["model_version"].astype(str)
    return df
