"""kafka-python, wrapped once: topic creation, end offsets, and the ingestor's consumer settings."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

from infra.errors import ServiceError
from infra.kafka_security import client_config
from infra.settings import Settings

if TYPE_CHECKING:
    from kafka.admin import NewTopic


def _admin(settings: Settings, timeout_s: float = 10.0):
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        return KafkaAdminClient(**client_config(settings), request_timeout_ms=int(timeout_s * 1000), client_id="lakeloop-admin")
    except (KafkaError, OSError, ValueError) as exc:
        raise ServiceError(
            f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}",
            hint="start the platform with `lakeloop up` or set LAKELOOP_KAFKA_BOOTSTRAP",
        ) from None


def ensure_topic(settings: Settings, topic: str, *, partitions: int | None = None) -> int:
    """Create ``topic`` (settings.topic_partitions partitions) if it does not exist; return its partition count."""
    return describe_topic(settings, topic, partitions=partitions)[0]


def describe_topic(settings: Settings, topic: str, *, partitions: int | None = None) -> tuple[int, uuid.UUID | None]:
    """(partition count, topic id) of ``topic``, created first if missing. The id (KIP-516) changes when a
    topic is deleted and recreated under the same name; None on brokers that do not report one."""
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    admin = _admin(settings)
    try:
        if topic not in admin.list_topics():
            try:
                admin.create_topics([new_topic(settings, topic, partitions or settings.topic_partitions)])
            except TopicAlreadyExistsError:
                pass
        for _ in range(50):
            desc = admin.describe_topics([topic])
            if desc and desc[0].get("partitions"):
                tid = desc[0].get("topic_id")
                tid = tid if isinstance(tid, uuid.UUID) else (uuid.UUID(str(tid)) if tid else None)
                return len(desc[0]["partitions"]), (None if tid is None or tid.int == 0 else tid)
            time.sleep(0.1)
        raise ServiceError(f"topic {topic!r} has no partitions after creation", hint="check the broker log")
    except KafkaError as exc:
        raise ServiceError(f"creating topic {topic!r} failed: {exc}", hint="check the broker log (lakeloop status)") from None
    finally:
        admin.close()


def new_topic(settings: Settings, topic: str, partitions: int) -> "NewTopic":
    """A topic as the settings say: its partitions, replication factor and min.insync.replicas."""
    from kafka.admin import NewTopic

    configs = {} if settings.topic_min_insync_replicas is None else {"min.insync.replicas": str(settings.topic_min_insync_replicas)}
    return NewTopic(topic, partitions, settings.topic_replication_factor, topic_configs=configs)


def consumer_config(settings: Settings, *, group: str | None, instance_id: str | None = None,
                    max_poll_records: int = 10_000, session_timeout_ms: int = 10_000) -> dict[str, Any]:
    """Settings for a KafkaConsumer that never auto-commits: offsets live in Delta (see design doc)."""
    cfg: dict[str, Any] = dict(
        **client_config(settings),
        group_id=group,
        client_id=f"lakeloop-ingest-{instance_id}" if instance_id else "lakeloop-ingest",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=max_poll_records,
        # 1 MiB per partition per fetch: the first records of a fetch arrive sooner and throughput is the same;
        # a record larger than this is still returned (KIP-74), so it need not follow max_event_bytes.
        max_partition_fetch_bytes=1024 * 1024,
        fetch_max_wait_ms=100,
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=max(1000, session_timeout_ms // 4),
        max_poll_interval_ms=300_000,
    )
    if instance_id:
        cfg["group_instance_id"] = instance_id  # static membership: a restart takes its partitions back at once
    return cfg


def make_consumer(settings: Settings, **kwargs: Any):
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    try:
        return KafkaConsumer(**consumer_config(settings, **kwargs))
    except (KafkaError, OSError, ValueError) as exc:
        raise ServiceError(
            f"cannot connect a consumer to Kafka at {settings.bootstrap_servers}: {exc}",
            hint="start the platform with `lakeloop up` or set LAKELOOP_KAFKA_BOOTSTRAP",
        ) from None


def offset_bounds(settings: Settings, topic: str) -> tuple[dict[int, int], dict[int, int]]:
    """(first offset still in Kafka, next offset to be written) per partition of ``topic``: a snapshot."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**client_config(settings), group_id=None, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or set()]
        begin, end = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
        return {tp.partition: o for tp, o in begin.items()}, {tp.partition: o for tp, o in end.items()}
    finally:
        consumer.close()


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """The next offset to be written, per partition of ``topic`` (a snapshot of 'the end')."""
    return offset_bounds(settings, topic)[1]
