"""``FeedbackProducer``: kafka-python, wrapped once. Idempotent, acks=all, batched, keyed by conversation.

Delivery errors are collected from the send futures and raised by ``flush()``/``close()`` as a
ServiceError that names how many records failed and why; nothing fails silently.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from feedback.kafka_io import ensure_topic
from infra.errors import ServiceError
from infra.kafka_security import client_config
from infra.settings import Settings


@dataclass
class DeliveryReport:
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)  # the first few, in words


def conversation_key(value: bytes | str | Mapping[str, Any]) -> bytes | None:
    """The Kafka key of a record: its ``conversation_id`` if it has one, else None (any partition)."""
    if isinstance(value, Mapping):
        conv = value.get("conversation_id")
    else:
        try:
            obj = json.loads(value)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None
        conv = obj.get("conversation_id") if isinstance(obj, dict) else None
    return conv.encode("utf-8") if isinstance(conv, str) and conv else None


class FeedbackProducer:
    """Send JSON records (dicts, str or bytes as-is) to a topic, creating it if missing."""

    def __init__(self, settings: Settings, *, topic: str | None = None, create_topic: bool = True,
                 linger_ms: int = 5, batch_size: int = 256 * 1024, **kafka_config: Any) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        self.topic = topic or settings.feedback_topic
        if create_topic:
            ensure_topic(settings, self.topic)
        try:
            self._producer = KafkaProducer(
                **client_config(settings),
                client_id="lakeloop-producer",
                acks="all",
                enable_idempotence=True,
                linger_ms=linger_ms,
                batch_size=batch_size,
                max_request_size=max(settings.max_event_bytes * 2, 1024 * 1024) + 4096,
                **kafka_config,
            )
        except (KafkaError, OSError, ValueError) as exc:
            raise ServiceError(
                f"cannot connect a producer to Kafka at {settings.bootstrap_servers}: {exc}",
                hint="start the platform with `lakeloop up` or set LAKELOOP_KAFKA_BOOTSTRAP",
            ) from None
        self.report = DeliveryReport()
        self._lock = threading.Lock()

    def send(self, value: bytes | str | Mapping[str, Any], *, key: bytes | str | None = None) -> Any:
        """Queue one record; a dict is serialized as compact JSON, bytes/str are sent as-is. Returns the future."""
        if isinstance(value, Mapping):
            payload = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        elif isinstance(value, str):
            payload = value.encode("utf-8")
        else:
            payload = value
        if key is None:
            key_bytes = conversation_key(value)
        else:
            key_bytes = key.encode("utf-8") if isinstance(key, str) else key
        future = self._producer.send(self.topic, key=key_bytes, value=payload)
        self.report.sent += 1
        future.add_callback(self._ok)
        future.add_errback(self._failed)
        return future

    def partitions(self) -> set[int]:
        """The topic's partitions, from the producer's metadata (fetched first if missing, up to max_block_ms):
        once known, ``send`` queues without blocking on metadata."""
        return set(self._producer.partitions_for(self.topic) or ())

    def send_many(self, values: Iterable[bytes | str | Mapping[str, Any]]) -> DeliveryReport:
        """Send all, wait for every delivery, raise ServiceError if any failed."""
        for v in values:
            self.send(v)
        self.flush()
        return self.report

    def flush(self, timeout_s: float = 60.0) -> DeliveryReport:
        """Wait for every queued record; raise ServiceError if any could not be delivered."""
        from kafka.errors import KafkaError

        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as exc:
            raise ServiceError(f"flushing to {self.topic} timed out: {exc}", hint="is the broker up? `lakeloop status`") from None
        if self.report.failed:
            raise ServiceError(
                f"{self.report.failed} of {self.report.sent} records were not delivered to {self.topic}: "
                + "; ".join(self.report.errors),
                hint="check the broker (`lakeloop status`) and the record sizes (broker message.max.bytes)",
            )
        return self.report

    def close(self, timeout_s: float = 30.0) -> None:
        try:
            self.flush(timeout_s)
        finally:
            self._producer.close(timeout=timeout_s)

    def __enter__(self) -> FeedbackProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ok(self, _metadata: Any) -> None:
        with self._lock:
            self.report.delivered += 1

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self.report.failed += 1
            if len(self.report.errors) < 5:
                self.report.errors.append(f"{type(exc).__name__}: {exc}")
