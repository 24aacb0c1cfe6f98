"""The prediction record contract and our one wrapper of Kafka for it (publish, and read a time range back).

Each prediction goes to ``settings.predictions_topic`` as JSON, keyed by conversation id, and ``publish``
returns only once the broker acknowledged it; the ingestor lands the topic in bronze/predictions. Canary
analysis can read the window straight from the topic (fresh; every record checked by a validator, invalid
ones skipped and counted) or from the lake (durable): both give the same columns.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

import pandas as pd

from feedback.validation import Invalid, Valid
from infra.errors import ServiceError
from infra.kafka_security import client_config
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


class PublishError(ServiceError):
    """Kafka did not acknowledge a prediction (broker down or slow, producer closed): it is not recorded."""


DEFAULT_ACK_TIMEOUT_S = 2.0


class KafkaPublisher:
    """Publishing that waits for Kafka's acknowledgement (acks=all), at most ``ack_timeout_s`` per record.

    ``publish`` returns once the broker has the record, or raises ``PublishError``. The producer gives a
    record up after the same time (delivery, request and metadata timeouts), so a ``PublishError`` means
    the producer will not send that record later either; only a record already on the wire when its time
    ran out may still land (at least once: the broker can store what it never acknowledged in time).
    Concurrent requests share the producer's batches, so waiting costs each request one broker round
    trip, not throughput. ``sent`` / ``failed`` / ``last_error`` count outcomes for ``/stats``.
    """

    def __init__(self, settings: Settings, *, ack_timeout_s: float = DEFAULT_ACK_TIMEOUT_S, linger_ms: int = 0) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        if ack_timeout_s <= 0:
            raise ValueError(f"ack_timeout_s must be > 0, got {ack_timeout_s}")
        self.topic = settings.predictions_topic
        self.ack_timeout_s = ack_timeout_s
        timeout_ms = max(int(ack_timeout_s * 1000), linger_ms + 1)
        try:
            self._producer = KafkaProducer(
                **client_config(settings), linger_ms=linger_ms, acks="all", enable_idempotence=True,
                delivery_timeout_ms=timeout_ms, request_timeout_ms=timeout_ms - linger_ms, max_block_ms=timeout_ms,
                reconnect_backoff_max_ms=1000,  # back within a second of the broker's return
            )
        except KafkaError as exc:
            raise ServiceError(
                f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}", hint="start the broker with `lakeloop up`"
            ) from exc
        self._lock = threading.Lock()
        self.sent = 0
        self.failed = 0
        self.last_error: str | None = None

    def publish(self, record: PredictionRecord) -> None:
        """Send ``record`` and wait for the broker's acknowledgement; ``PublishError`` if none came in time."""
        from kafka.errors import KafkaError

        try:
            future = self._producer.send(self.topic, key=record.conversation_id.encode("utf-8"), value=record.to_json())
            # the producer expires the record at ack_timeout_s; the margin lets its verdict arrive first
            future.get(timeout=self.ack_timeout_s + 0.5)
        except KafkaError as exc:
            message = f"{type(exc).__name__}: {exc}"
            with self._lock:
                self.failed += 1
                self.last_error = message
            raise PublishError(
                f"Kafka did not acknowledge the prediction on {self.topic} within {self.ack_timeout_s:g} s ({message})",
                hint="the prediction was not recorded; retry later, and check the broker (`lakeloop status`)",
            ) from exc
        with self._lock:
            self.sent += 1

    def flush(self, timeout: float = 10.0) -> None:
        self._producer.flush(timeout=timeout)

    def close(self) -> None:
        self._producer.close(timeout=5)


Validator = Callable[[bytes | None], Valid | Invalid]


@dataclass(frozen=True)
class TopicRead:
    """The records of a topic in a time range that passed the validator, and what was skipped."""

    records: list[dict[str, Any]]
    invalid: int = 0
    invalid_by_stage: Mapping[str, int] = field(default_factory=dict)  # decode / validate / size
    first_invalid: str | None = None  # offset and reason of the first skipped record, for the log


def read_topic(
    settings: Settings, topic: str, *, since: datetime, until: datetime, validate: Validator, timeout_s: float = 20.0,
) -> TopicRead:
    """Records of ``topic`` whose Kafka timestamp is in [since, until), from every partition, checked by
    ``validate`` (the ingestor's validator of that stream). An invalid record is skipped and counted, never
    raised: one bad record must not abort an analysis window. Each valid record comes back as the JSON
    object that was sent."""
    import time

    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**client_config(settings), enable_auto_commit=False, consumer_timeout_ms=1000)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return TopicRead([])
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
        stages: Counter[str] = Counter()
        first_invalid: str | None = None
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            for tp, msgs in consumer.poll(timeout_ms=500, max_records=5000).items():
                for m in msgs:
                    if m.offset >= pending.get(tp, -1) or not start_ms <= m.timestamp < end_ms:
                        continue
                    result = validate(m.value)
                    if type(result) is Valid:
                        out.append(json.loads(result.text))  # safe: the validator parsed it within its depth limit
                        continue
                    stages[result.stage] += 1
                    if first_invalid is None:
                        first_invalid = f"partition {tp.partition} offset {m.offset}: {result.stage}: {result.reason}"
                if consumer.position(tp) >= pending.get(tp, 0):
                    pending.pop(tp, None)
        if pending:
            raise ServiceError(f"reading {topic} timed out with {len(pending)} partitions unfinished", hint="is the broker healthy?")
        return TopicRead(out, sum(stages.values()), dict(stages), first_invalid)
    finally:
        consumer.close()


def predictions_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame.from_records(records, columns=list(COLUMNS))
    df["score"] = pd.to_numeric(df["score"], errors="coerce")
    df["latency_ms"] = pd.to_numeric(df["latency_ms"], errors="coerce")
    df["model_version"] = df["model_version"].astype(str)
    return df
