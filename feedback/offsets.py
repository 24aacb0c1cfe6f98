"""The offsets stored in the lake against the topic as it is now: its identity, its range, re-seeding.

Stored offsets belong to one incarnation of a topic. A topic deleted and recreated under the same name
starts again at offset 0: seeking to the stored offset + 1 would skip the new topic's first records
(or wait forever past its end, showing lag 0). So every commit also stores the topic's identity (a
63-bit fingerprint of its KIP-516 topic id, as one more Delta application transaction beside the
offsets), and the ingestor checks before consuming: same topic, and no stored offset beyond a
partition's end. Otherwise it stops and names the command that re-seeds, ``lakeloop lake reseed``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Literal

import pyarrow as pa

from feedback.delta_sink import DeltaSink
from feedback.streams import Stream
from infra.errors import OffsetError
from infra.settings import Settings

Start = Literal["earliest", "latest"]


def topic_fingerprint(topic_id: uuid.UUID | None) -> int | None:
    """A topic id as a non-negative 63-bit integer (a Delta transaction version), None without an id."""
    return None if topic_id is None else topic_id.int >> 65


def reseed_hint(stream: Stream) -> str:
    return (f"if the topic was recreated on purpose, re-seed the offsets: `lakeloop lake reseed --stream {stream.name} "
            "--from earliest` (re-reads what the topic holds now) or `--from latest` (skips it)")


def check_stored_offsets(stream: Stream, target: DeltaSink, *, fingerprint: int | None,
                         ends: Mapping[int, int]) -> None:
    """Raise ``OffsetError`` when the offsets stored in ``target`` do not belong to the topic as it is now:
    another topic id, or a stored offset at or beyond a partition's end offset (``ends``: next offset to
    be written). Never a silent skip: the error says what happened and how to re-seed."""
    topic = stream.topic
    stored_fp = target.stored_topic(topic)
    if stored_fp is not None and fingerprint is not None and stored_fp != fingerprint:
        raise OffsetError(
            f"{stream.table}: the offsets stored for topic {topic!r} belong to another topic of that name (it was "
            f"deleted and recreated: stored topic fingerprint {stored_fp}, the topic now {fingerprint}); "
            "resuming would skip or misread the new topic's records",
            hint=reseed_hint(stream),
        )
    stored = target.stored_offsets(topic, sorted(ends), refresh=stored_fp is None)
    beyond = {p: (o, ends[p]) for p, o in stored.items() if o is not None and o >= ends[p]}
    if beyond:
        shown = ", ".join(f"p{p}: stored {o}, the partition ends at {end - 1}" for p, (o, end) in sorted(beyond.items()))
        raise OffsetError(
            f"{stream.table}: offsets stored for topic {topic!r} lie beyond the end of its partitions ({shown}): the "
            "topic was recreated or truncated, or LAKELOOP_KAFKA_BOOTSTRAP points at another cluster",
            hint=reseed_hint(stream),
        )


def reseed(settings: Settings, stream: Stream, *, start: Start) -> dict[int, int]:
    """Bind the stream's stored offsets to the topic as it is now: per partition, the target and the
    dead-letter table store offset ``first - 1`` (``earliest``: the ingestor reads everything the topic
    still holds) or ``end - 1`` (``latest``: it reads only what comes next), with the topic's identity.
    Returns the offset each partition will be read from."""
    from feedback.flush import sinks_for
    from feedback.kafka_io import describe_topic, offset_bounds

    _, topic_id = describe_topic(settings, stream.topic)
    beginnings, ends = offset_bounds(settings, stream.topic)
    nxt = beginnings if start == "earliest" else ends
    fingerprint = topic_fingerprint(topic_id)
    for sink in sinks_for(settings, stream):
        sink.set_offsets(pa.Table.from_pylist([], schema=sink.schema), topic=stream.topic,
                         offsets={p: o - 1 for p, o in nxt.items()}, topic_fingerprint=fingerprint,
                         metadata={"lakeloop.reseed": start})
    return dict(nxt)
