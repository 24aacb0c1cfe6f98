"""The Kafka -> Delta ingestor: consume a stream, validate, flush batches exactly once, report progress.

Offsets live in the Delta log (docs/design/ingestion.md). On every assignment the ingestor seeks each
partition to the offset after the one stored in the target table; on revocation it flushes first.
Kafka's committed offsets are written after each flush only so that Kafka tools show the lag.

kafka-python 3 runs rebalance callbacks on its IO thread, so the batch, the owned partitions and the
flush are guarded by one lock, and records are taken only in strict offset order per partition (a
fetch made before a seek can neither double nor skip a record). The loop only buffers the records'
bytes; validation, Arrow conversion and the commits run on the writer thread (validation and Arrow
optionally in a worker process, ``feedback/flush.py``), overlapping with consumption.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from operator import attrgetter

from feedback.allocator import keep_big_buffers
from feedback.batch import FlushPolicy, RawBatch, flush_reason
from feedback.flush import Flusher, FlushMode, sinks_for
from feedback.kafka_io import describe_topic, make_consumer, offset_bounds
from feedback.offsets import check_stored_offsets, topic_fingerprint
from feedback.progress import IngestStats
from feedback.streams import Stream
from feedback.writer import BackgroundWriter
from infra.errors import ServiceError
from infra.settings import Settings

log = logging.getLogger(__name__)
_TIMESTAMP, _VALUE = attrgetter("timestamp"), attrgetter("value")
DEFAULT_GROUP = "lakeloop-ingest"
BROKER_WAIT_ONCE_S = 60.0  # a catch-up run (--once, the Dagster assets) gives up on a broker gone this long


class Ingestor:
    """One consumer of one stream. ``run(once=True)`` catches up with the end offsets seen at start."""

    def __init__(self, settings: Settings, stream: Stream, *, group: str = DEFAULT_GROUP, instance_id: str | None = None,
                 policy: FlushPolicy = FlushPolicy(), progress_every_s: float = 5.0, max_poll_records: int = 10_000,
                 flush_mode: FlushMode | None = None, say: Callable[[str], None] = print) -> None:
        self.settings = settings
        self.stream = stream
        self.group = group
        self.instance_id = instance_id
        self.policy = policy
        self.progress_every_s = progress_every_s
        self.max_poll_records = max_poll_records
        self.flush_mode: FlushMode = flush_mode or settings.ingest_flush_mode
        self.say = say
        self.target, self.dead, *self.side = sinks_for(settings, stream)  # side: the erasure requests' table
        self.stats = IngestStats(stream.name, stream.topic)
        self._lock = threading.RLock()
        self._batch = RawBatch(stream.topic)
        self._owned: set[int] = set()
        self._next: dict[int, int | None] = {}  # next offset expected per owned partition
        self._gap_checked: dict[int, int] = {}  # partition -> offset we seeked back to once
        self._assigned_once = False
        self._fatal: BaseException | None = None
        self._consumer = None
        self._kafka_pending: dict[int, int] = {}
        self._seen: set[int] = set()  # every partition ever assigned, for the summary
        self._beginnings: dict[int, int] = {}
        self._stats_lock = threading.Lock()  # stats and Kafka offsets, updated by the writer thread
        self._writer: BackgroundWriter | None = None
        self._flusher: Flusher | None = None
        self._handed: dict[int, int | None] = {}  # per owned partition: the last offset handed to the flusher
        self._fingerprint: int | None = None  # the topic's identity (feedback.offsets)
        self._broker_down_since: float | None = None  # monotonic time the broker became unreachable

    # ---- the loop -----------------------------------------------------------------------------
    def run(self, *, once: bool = False, stop: threading.Event | None = None, handle_signals: bool = False,
            max_seconds: float | None = None) -> IngestStats:
        """Consume until ``stop`` is set (or SIGTERM/SIGINT when ``handle_signals``), or until caught up if ``once``."""
        stop = stop or threading.Event()
        keep_big_buffers()  # kafka-python's fetch buffers reused from the heap, not mmapped anew (feedback.allocator)
        with _fewer_collections():
            return self._run(once=once, stop=stop, handle_signals=handle_signals, max_seconds=max_seconds)

    def _run(self, *, once: bool, stop: threading.Event, handle_signals: bool, max_seconds: float | None) -> IngestStats:
        restore = _install_signal_handlers(stop) if handle_signals else {}
        _, topic_id = describe_topic(self.settings, self.stream.topic)
        self._fingerprint = topic_fingerprint(topic_id)
        self.target.open()
        self.dead.open()
        for sink in self.side:
            sink.open()
        # explicit first offsets: a seek to a known offset fetches sooner than a reset to "earliest"
        self._beginnings, ends = offset_bounds(self.settings, self.stream.topic)
        # the stored offsets must belong to this topic and lie within it: else stop and say how to re-seed
        check_stored_offsets(self.stream, self.target, fingerprint=self._fingerprint, ends=ends)
        if not once:
            ends = {}
        from kafka import ConsumerRebalanceListener

        ingestor = self

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):  # noqa: D401 - kafka-python callback
                ingestor._on_revoked([tp.partition for tp in revoked])

            def on_partitions_assigned(self, assigned):
                ingestor._on_assigned(list(assigned))

        self._flusher = Flusher(self.settings, self.stream, mode=self.flush_mode,  # its workers boot meanwhile
                                workers=self.settings.ingest_flush_workers)
        try:
            consumer = self._consumer = make_consumer(
                self.settings, group=self.group, instance_id=self.instance_id, max_poll_records=self.max_poll_records
            )
        except BaseException:
            self._flusher.close()
            raise
        # two batches waiting per worker: the consumer runs ahead while a worker waits for its turn to commit
        # (measured on 2 cores, two workers: 1 waiting per worker -> 51-54k/s, 2 per worker -> 58-60k/s)
        self._writer = BackgroundWriter(max_waiting=2 * self.settings.ingest_flush_workers if self.flush_mode == "process" else 1)
        deadline = time.monotonic() + max_seconds if max_seconds else None
        next_progress = time.monotonic() + self.progress_every_s
        try:
            self._flusher.wait_ready()
            consumer.subscribe([self.stream.topic], listener=Listener())
            while not stop.is_set():
                self._raise_fatal()
                with self._lock:
                    held = len(self._batch)
                    wait = self.policy.latency_s - self._age() if held else 0.5
                room = max(1, min(self.max_poll_records, self.policy.max_records - held))  # batches stay near max_records
                polled = self._poll(consumer, timeout_ms=int(max(0.01, min(wait, 0.5)) * 1000), max_records=room, once=once)
                with self._lock:
                    if polled:
                        for tp, records in polled.items():
                            self._add(tp.partition, records)
                    reason = flush_reason(self.policy, records=len(self._batch), nbytes=self._batch.nbytes, age_s=self._age())
                    if reason:
                        self._flush(reason)
                self._commit_to_kafka()
                if time.monotonic() >= next_progress:
                    next_progress = time.monotonic() + self.progress_every_s
                    self.say(self.stats.progress_line(self._lag(), len(self._batch)))
                if once and self._caught_up(ends):
                    break
                if deadline and time.monotonic() > deadline:
                    break
            self._raise_fatal()
            with self._lock:
                self._flush("exit")
            self._drain()
            self._commit_to_kafka()
        finally:
            self._consumer = None
            try:
                consumer.close(autocommit=False)
            finally:
                writer, self._writer = self._writer, None
                try:
                    writer.close()
                finally:
                    flusher, self._flusher = self._flusher, None
                    flusher.close()
                for sig, handler in restore.items():
                    signal.signal(sig, handler)
        self._raise_fatal()
        self.stats.target_version = self.target.version()
        self.stats.dead_letters_version = self.dead.version()
        self.stats.stored_offsets = self.target.stored_offsets(self.stream.topic, sorted(set(ends) | self._seen))
        self.say(self.stats.summary_line())
        return self.stats

    def _poll(self, consumer, *, timeout_ms: int, max_records: int, once: bool) -> dict:
        """``consumer.poll``, riding out a broker that is down or restarting.

        kafka-python raises a retriable error (connection refused, coordinator not available, timeouts) from
        ``poll`` while the broker is gone; the ingestor waits with backoff and resumes where the Delta log
        says when it is back (the group rebalances; nothing is lost or doubled). Batches already held are
        flushed meanwhile. With ``once`` (a catch-up run) it gives up after ``BROKER_WAIT_ONCE_S``.
        """
        from kafka.errors import KafkaError

        try:
            polled = consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        except KafkaError as exc:
            if not getattr(exc, "retriable", False):
                raise
            now = time.monotonic()
            if self._broker_down_since is None:
                self._broker_down_since = now
                self.say(f"[{self.stream.name}] Kafka at {self.settings.bootstrap_servers} is unreachable "
                         f"({type(exc).__name__}); waiting for it, the lake keeps what was flushed")
            down = now - self._broker_down_since
            if once and down > BROKER_WAIT_ONCE_S:
                raise ServiceError(f"Kafka at {self.settings.bootstrap_servers} has been unreachable for {down:.0f} s "
                                   f"({type(exc).__name__}: {exc})",
                                   hint="start the broker (`lakeloop up`) or check LAKELOOP_KAFKA_BOOTSTRAP; "
                                   "a later run resumes from the offsets in the Delta log") from None
            time.sleep(min(2.0, 0.2 * 2 ** min(5, int(down))))
            return {}
        if self._broker_down_since is not None and polled:
            # records are the proof: between errors a poll also returns nothing while the broker is still down
            self.say(f"[{self.stream.name}] Kafka is back (first error {time.monotonic() - self._broker_down_since:.0f} s "
                     "ago); resuming from the offsets in the Delta log")
            self._broker_down_since = None
        return polled

    # ---- records ------------------------------------------------------------------------------
    def _add(self, partition: int, records: list) -> None:
        """Buffer the records of one owned partition (lock held), strictly in offset order.

        A record below the expected offset is a copy fetched before a seek: dropped. A record above it is
        either a real gap (control records, compaction) or a stale fetch that skipped records: the first
        time, seek back to the expected offset and drop the rest; if the broker answers with the same
        gap again, it is real and the records are taken. The common case, a run that continues exactly
        where the last one ended, is taken whole.
        """
        if partition not in self._owned or not records:
            return
        nxt = self._next.get(partition)
        batch = self._batch
        if batch.opened_at is None:
            self._open_batch()
        first, last = records[0].offset, records[-1].offset
        if (nxt is None or first == nxt) and last - first == len(records) - 1:
            batch.extend(partition, range(first, last + 1), list(map(_TIMESTAMP, records)), list(map(_VALUE, records)))
            self._next[partition] = last + 1
            return
        for r in records:
            offset = r.offset
            if nxt is not None and offset != nxt:
                if offset < nxt:
                    continue
                if self._gap_checked.get(partition) != nxt:
                    self._gap_checked[partition] = nxt
                    self._seek(partition, nxt)
                    break
                log.warning("%s/%d: offsets %d..%d do not exist (gap); continuing at %d", self.stream.topic, partition, nxt, offset - 1, offset)
            nxt = offset + 1
            batch.add(partition, offset, r.timestamp, r.value)
        self._next[partition] = nxt
        if not len(batch):
            batch.opened_at = None

    def _open_batch(self) -> None:
        self._batch.opened_at = time.monotonic()
        if self.stats.first_record_at is None:
            self.stats.first_record_at = self._batch.opened_at

    def _seek(self, partition: int, offset: int) -> None:
        from kafka import TopicPartition

        if self._consumer is not None:
            self._consumer.seek(TopicPartition(self.stream.topic, partition), offset)

    def _age(self) -> float:
        opened = self._batch.opened_at
        return 0.0 if opened is None else time.monotonic() - opened

    def _flush(self, reason: str) -> None:
        """Hand the batch to the flusher and the writer thread (lock held); a new batch starts at once."""
        batch = self._batch
        if len(batch) == 0:
            return
        self._batch = RawBatch(self.stream.topic)
        self.stats.records += len(batch)
        # what the batch follows: the commit refuses it if that did not land (a failed earlier flush)
        batch.after = {p: self._handed.get(p) for p in batch.last_offset}
        batch.topic_fingerprint = self._fingerprint
        self._handed.update(batch.last_offset)
        assert self._flusher is not None and self._writer is not None, "flush outside run()"
        started = self._flusher.start(batch, reason)  # queued to the worker at once
        self._writer.submit(lambda: self._write(started, batch.last_offset, reason))

    def _write(self, started: object, last_offsets: dict[int, int], reason: str) -> None:
        """Commit a started flush (feedback.flush). Writer thread; no self._lock."""
        assert self._flusher is not None
        out = self._flusher.finish(started, reason)  # type: ignore[arg-type]
        with self._stats_lock:
            st = self.stats
            st.valid, st.dead, st.skipped = st.valid + out.rows, st.dead + out.dead, st.skipped + out.skipped
            st.requests += out.requests
            st.flushes += 1
            st.flush_reasons[reason] = st.flush_reasons.get(reason, 0) + 1
            st.finished_at = time.monotonic()
            self._kafka_pending.update({p: o + 1 for p, o in last_offsets.items()})

    def _drain(self) -> None:
        if self._writer is not None:
            self._writer.drain()

    # ---- rebalance callbacks (kafka-python's IO thread) -----------------------------------------
    def _on_revoked(self, partitions: list[int]) -> None:
        with self._lock:
            try:
                self._flush("rebalance")
                self._drain()  # the new owner must find our offsets in the Delta log
            except BaseException as exc:  # noqa: BLE001 - surfaced by the main loop
                self._fatal = exc
                self._batch = RawBatch(self.stream.topic)
            self._owned.difference_update(partitions)
            for p in partitions:
                self._next.pop(p, None)
                self._handed.pop(p, None)
            with self._stats_lock:
                for p in partitions:
                    self._kafka_pending.pop(p, None)
            if partitions:
                self.stats.rebalances += 1

    def _on_assigned(self, assigned: list) -> None:
        from kafka import TopicPartition

        with self._lock:
            self._assigned_once = True
            parts = sorted(tp.partition for tp in assigned)
            try:
                self._drain()
                stored = self.target.stored_offsets(self.stream.topic, parts)
            except BaseException as exc:  # noqa: BLE001 - surfaced by the main loop
                self._fatal = exc
                return
            for p in parts:
                tp = TopicPartition(self.stream.topic, p)
                self._handed[p] = stored[p]
                if stored[p] is None and p in self._beginnings:
                    self._consumer.seek(tp, self._beginnings[p])  # if retention moved on: auto_offset_reset=earliest
                    self._next[p] = self._beginnings[p]
                elif stored[p] is None:  # a partition added after start
                    self._consumer.seek_to_beginning(tp)
                    self._next[p] = None
                else:
                    self._consumer.seek(tp, stored[p] + 1)
                    self._next[p] = stored[p] + 1
            self._owned.update(parts)
            self._seen.update(parts)
        seeks = ", ".join(f"p{p}@{'start' if stored[p] is None else stored[p] + 1}" for p in parts)
        self.say(f"[{self.stream.name}] assigned {self.stream.topic}: {seeks or '(nothing)'} (offsets from the Delta log)")

    # ---- helpers ------------------------------------------------------------------------------
    def _raise_fatal(self) -> None:
        if self._writer is not None:
            self._writer.raise_error()
        if self._fatal is not None:
            exc, self._fatal = self._fatal, None
            raise exc

    def _commit_to_kafka(self) -> None:
        """Mirror the flushed offsets to Kafka for lag tools only; failures do not matter."""
        with self._stats_lock:
            pending = {p: o for p, o in self._kafka_pending.items() if p in self._owned}
            self._kafka_pending.clear()
        if not pending or self._consumer is None:
            return
        from kafka import OffsetAndMetadata, TopicPartition

        offsets = {TopicPartition(self.stream.topic, p): OffsetAndMetadata(o, "", -1) for p, o in pending.items()}
        try:
            self._consumer.commit_async(offsets=offsets)
        except Exception as exc:  # noqa: BLE001 - lag display only
            log.debug("committing offsets to Kafka failed: %s", exc)

    def _lag(self) -> dict[int, int | None]:
        out: dict[int, int | None] = {}
        from kafka import TopicPartition

        for p in sorted(self._owned):
            try:
                high = self._consumer.highwater(TopicPartition(self.stream.topic, p)) if self._consumer else None
            except Exception:  # noqa: BLE001 - partition revoked meanwhile
                high = None
            nxt = self._next.get(p)
            out[p] = None if high is None or nxt is None else max(0, high - nxt)
        return out

    def _caught_up(self, ends: dict[int, int]) -> bool:
        from kafka import TopicPartition

        with self._lock:
            if not self._assigned_once:
                return False
            owned = {p: self._next.get(p) for p in self._owned}
        for p, nxt in owned.items():
            if nxt is None and self._consumer is not None:
                nxt = self._consumer.position(TopicPartition(self.stream.topic, p))
            if nxt is None or nxt < ends.get(p, 0):
                return False
        return True


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    """Collect garbage less often while consuming: kafka-python allocates ~10k short-lived record objects
    per poll, and with the default thresholds (700) the collector scanned them over and over (~15% of the
    consumer's CPU; measured 10.2-10.8 -> 8.4-9.2 us per record). Nothing the loop keeps forms cycles.
    The process's settings are restored on exit (the Dagster assets run the ingestor in-process)."""
    thresholds = gc.get_threshold()
    gc.freeze()  # what exists now (imports, settings) is never scanned again during the run
    gc.set_threshold(50_000, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def _install_signal_handlers(stop: threading.Event) -> dict:
    """SIGTERM/SIGINT set ``stop``: the loop flushes what it holds and exits."""
    old = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        old[sig] = signal.signal(sig, lambda signum, frame: stop.set())
    return old
