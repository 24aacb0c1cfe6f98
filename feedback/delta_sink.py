"""Exactly-once appends of Kafka records to one Delta table, with the offsets in the same commit.

See docs/design/ingestion.md, "The offset protocol". In short: one Delta application transaction per
(table, topic, partition) whose version is the last Kafka offset the table accounts for; before each
commit, read the stored versions from the ``DeltaTable`` object, drop rows at or below them, and write
through that same object so a racing writer of the same partition makes the commit fail (delta-rs'
conflict checker) instead of doubling rows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import (
    ColumnProperties,
    CommitProperties,
    DeltaTable,
    Schema,
    Transaction,
    WriterProperties,
    write_deltalake,
)
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from infra.errors import CommitConflictError, ConfigError, DataError, OffsetError

log = logging.getLogger(__name__)

APP_PREFIX = "lakeloop-ingest"
TOPIC_PREFIX = "lakeloop-topic"
# Table properties that let Delta expire `txn` actions, i.e. forget our offsets.
EXPIRING_PROPERTIES = ("delta.setTransactionRetentionDuration",)


def app_id(table: str, topic: str, partition: int) -> str:
    """The Delta application id that stores the offset of ``topic``/``partition`` in ``table``."""
    return f"{APP_PREFIX}:{table}:{topic}:{partition}"


def topic_app_id(table: str, topic: str) -> str:
    """The Delta application id whose version is the fingerprint of the topic the offsets belong to."""
    return f"{TOPIC_PREFIX}:{table}:{topic}"


@dataclass(frozen=True)
class CommitOutcome:
    version: int | None  # Delta version written, None when everything was already stored
    rows: int  # rows written
    skipped_rows: int  # rows dropped because the table already had them
    attempts: int


class DeltaSink:
    """One Delta table that Kafka records are appended to exactly once. Not thread-safe."""

    def __init__(self, uri: str, schema: pa.Schema, *, table: str, partition_by: Iterable[str] = (),
                 max_attempts: int = 6, storage_options: dict[str, str] | None = None) -> None:
        self.uri = uri
        self.schema = schema
        self.table = table
        self.partition_by = list(partition_by)
        self.max_attempts = max_attempts
        self.storage_options = storage_options
        self._dt: DeltaTable | None = None

    # ---- opening ------------------------------------------------------------------------------
    def open(self) -> DeltaTable:
        """Create the table if missing, then check its schema and properties. Idempotent."""
        if self._dt is None:
            self._dt = self._load_or_create()
            self._check(self._dt)
        return self._dt

    def _load_or_create(self) -> DeltaTable:
        try:
            return DeltaTable(self.uri, storage_options=self.storage_options)
        except TableNotFoundError:
            pass
        try:
            return DeltaTable.create(
                self.uri, self.schema, mode="ignore", partition_by=self.partition_by or None,
                name=self.table.replace("/", "_"), storage_options=self.storage_options,
            )
        except DeltaError:  # another ingestor created it at the same moment
            return DeltaTable(self.uri, storage_options=self.storage_options)

    def _check(self, dt: DeltaTable) -> None:
        config = dt.metadata().configuration
        for prop in EXPIRING_PROPERTIES:
            if config.get(prop) is not None:
                raise ConfigError(
                    f"{self.uri} sets {prop}={config[prop]}: Delta may expire the application transactions "
                    "that hold the ingested Kafka offsets, and the ingestor would then ingest records twice",
                    hint=f"remove the property (Spark SQL: ALTER TABLE delta.`{self.uri}` UNSET TBLPROPERTIES ('{prop}')) "
                    "or ingest into a new table",
                )
        want = {f.name: f.type for f in Schema.from_arrow(self.schema).fields}
        have = {f.name: f.type for f in dt.schema().fields}
        wrong = [n for n, t in want.items() if n not in have or have[n] != t]
        if wrong or sorted(dt.metadata().partition_columns) != sorted(self.partition_by):
            raise DataError(
                f"{self.uri} does not have the bronze schema of {self.table}: columns {wrong or '(ok)'} missing or of "
                f"another type; partition columns {dt.metadata().partition_columns} (want {self.partition_by})",
                hint="point LAKELOOP_LAKE_ROOT at a lake whose tables lakeloop created, or move the table away",
            )

    # ---- offsets ------------------------------------------------------------------------------
    def stored_offsets(self, topic: str, partitions: Iterable[int], *, refresh: bool = True) -> dict[int, int | None]:
        """The last offset stored per partition (None: nothing stored yet), from the Delta log."""
        dt = self.open()
        if refresh:
            dt.update_incremental()
        return {p: dt.transaction_version(app_id(self.table, topic, p)) for p in partitions}

    def stored_topic(self, topic: str, *, refresh: bool = True) -> int | None:
        """The fingerprint of the topic whose offsets are stored (``feedback.offsets``), None before the first."""
        dt = self.open()
        if refresh:
            dt.update_incremental()
        return dt.transaction_version(topic_app_id(self.table, topic))

    def check_continues(self, topic: str, after: Mapping[int, int | None]) -> None:
        """Refuse a batch that would leave a gap: for each partition, the batch follows offset ``after[p]``
        (None: nothing stored when it was read), so the table must have stored at least that offset.

        A stored offset below it means an earlier batch never committed (it failed); committing this one
        would move the offsets past that batch's records and lose them.
        """
        wanted = {p: o for p, o in after.items() if o is not None}
        if not wanted:
            return
        stored = self.stored_offsets(topic, wanted)
        gaps = {p: (stored[p], o) for p, o in wanted.items() if stored[p] is None or stored[p] < o}
        if gaps:
            shown = ", ".join(f"p{p}: stored {s if s is not None else 'nothing'}, batch follows {o}"
                              for p, (s, o) in sorted(gaps.items()))
            raise OffsetError(
                f"{self.table}: refused a batch of {topic} that does not continue the stored offsets ({shown}); "
                "an earlier batch did not commit, so committing this one would skip its records",
                hint="restart the ingestor: it seeks from the offsets stored in Delta and reads those records again",
            )

    # ---- writing ------------------------------------------------------------------------------
    def commit(self, data: pa.Table, *, topic: str, last_offsets: Mapping[int, int],
               metadata: Mapping[str, str] | None = None, topic_fingerprint: int | None = None) -> CommitOutcome:
        """Append ``data`` and set the offset of each partition in ``last_offsets``, in one commit.

        Rows whose (partition, offset) the table already accounts for are dropped first; a partition with
        no new row still gets its offset advanced. ``topic_fingerprint`` (the topic's identity) is stored
        in the same commit. Raises CommitConflictError after ``max_attempts``.
        """
        dt = self.open()
        delay = 0.05
        last_error: Exception | None = None
        for attempt in range(1, self.max_attempts + 1):
            if attempt > 1:
                dt = self._dt = DeltaTable(self.uri, storage_options=self.storage_options)  # re-read after a failure
            else:
                dt.update_incremental()
            stored = {p: dt.transaction_version(app_id(self.table, topic, p)) for p in last_offsets}
            todo = {p: o for p, o in last_offsets.items() if stored[p] is None or o > stored[p]}
            if not todo:
                return CommitOutcome(None, 0, data.num_rows, attempt)
            keep = _unstored_rows(data, stored, todo)
            props = self._commit_properties(topic, todo, topic_fingerprint, metadata)
            try:
                write_deltalake(dt, keep, mode="append", commit_properties=props, writer_properties=_writer_properties(keep.schema))
            except CommitFailedError as exc:  # a racing writer of one of our partitions won; re-read and filter
                log.info("%s: commit lost a race (%s); re-reading stored offsets", self.table, exc)
                last_error = exc
                continue
            except (DeltaError, OSError) as exc:  # ambiguous: it may have landed; re-read before retrying
                log.warning("%s: commit failed (%s); re-reading stored offsets before retry %d", self.table, exc, attempt)
                last_error = exc
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            return CommitOutcome(dt.version(), keep.num_rows, data.num_rows - keep.num_rows, attempt)
        raise CommitConflictError(
            f"{self.table}: could not commit after {self.max_attempts} attempts: {last_error}",
            hint="check the lake's storage; restart the ingestor (it resumes from the offsets stored in Delta)",
        )

    def set_offsets(self, empty: pa.Table, *, topic: str, offsets: Mapping[int, int], topic_fingerprint: int | None,
                    metadata: Mapping[str, str] | None = None) -> int:
        """Store ``offsets`` as given (they may move back: re-seeding) and the topic's identity, in one
        commit without rows (``empty``). Returns the new table version."""
        dt = self.open()
        dt.update_incremental()
        write_deltalake(dt, empty, mode="append",
                        commit_properties=self._commit_properties(topic, offsets, topic_fingerprint, metadata))
        dt.update_incremental()
        return dt.version()

    def _commit_properties(self, topic: str, offsets: Mapping[int, int], topic_fingerprint: int | None,
                           metadata: Mapping[str, str] | None) -> CommitProperties:
        """The commit's application transactions: one offset per partition, and the topic's identity."""
        txns = [Transaction(app_id(self.table, topic, p), o) for p, o in sorted(offsets.items())]
        if topic_fingerprint is not None:
            txns.append(Transaction(topic_app_id(self.table, topic), topic_fingerprint))
        return CommitProperties(app_transactions=txns, custom_metadata={"lakeloop.topic": topic, **(metadata or {})})

    def version(self) -> int:
        """The table's latest version (refreshed: another process may have written it)."""
        dt = self.open()
        dt.update_incremental()
        return dt.version()


# Long free text (the payload, prompts, responses): no Parquet statistics (min/max of kilobyte strings
# serve no query and cost ~12% of the write's CPU) and no dictionary for the always-unique payload.
_FREE_TEXT = ("raw", "prompt", "response", "corrected_response", "response_b", "comment", "metadata", "reason")


def _writer_properties(schema: pa.Schema) -> WriterProperties:
    text = [n for n in _FREE_TEXT if n in schema.names]
    return WriterProperties(compression="SNAPPY", column_properties={
        n: ColumnProperties(dictionary_enabled=n not in ("raw", "reason"), statistics_enabled="NONE") for n in text})


def _unstored_rows(data: pa.Table, stored: Mapping[int, int | None], todo: Mapping[int, int]) -> pa.Table:
    """Rows of partitions in ``todo`` whose offset is above the stored version."""
    if all(stored.get(p) is None for p in todo) and set(todo) == set(stored):
        return data
    parts = data.column("kafka_partition")
    offsets = data.column("kafka_offset")
    mask = None
    for p in todo:
        floor = stored.get(p)
        cond = pc.equal(parts, p)
        if floor is not None:
            cond = pc.and_(cond, pc.greater(offsets, floor))
        mask = cond if mask is None else pc.or_(mask, cond)
    if mask is not None and pc.all(mask).as_py():  # the common case: every row is new (no copy of the table)
        return data
    return data.filter(mask)
