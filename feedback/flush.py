"""A flush in two steps: ``prepare`` (validate, build Arrow tables; pure CPU) and ``commit_prepared``
(the commits of the offset protocol: erasure requests and dead letters first, then the target with the offsets).

Where a flush runs is a choice (``FlushMode``). ``"thread"``: on the ingestor's writer thread, sharing
the GIL with the consumer loop. ``"process"`` (default): in one spawned worker process, the committer,
so that kafka-python's record parsing (the consumer loop) and validation + Parquet + commit use both
cores: the loop hands over value bytes and Kafka coordinates and gets the outcome back (row counts).
The values of a big batch travel in shared memory that a shipping thread fills off the consumer's
path (``feedback.handoff``); the rest is pickled through the pool's pipe. The offset protocol runs
unchanged, only in the worker: it reads the stored offsets from its own ``DeltaTable`` and commits
through that same object, so a racing writer (another
ingestor, or a restarted one while an orphaned worker finishes its last commit) makes the commit
fail instead of doubling rows. Flushes run strictly in order (one worker, one writer thread). The
worker ignores SIGINT/SIGTERM (the ingestor decides when to stop: it drains, then closes the pool)
and exits when the ingestor is gone.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

from feedback import bronze
from feedback.allocator import keep_big_buffers
from feedback.batch import RawBatch
from feedback.bronze import DEAD_LETTERS_SCHEMA
from feedback.delta_sink import DeltaSink
from feedback.handoff import Mappings, Segments, Ticket
from feedback.streams import DEAD_LETTERS_TABLE, Stream, get_stream
from infra.errors import OffsetError
from infra.settings import Settings
from infra.storage import storage_options
from infra.tables import table_uri

FlushMode = Literal["process", "thread"]


@dataclass(frozen=True)
class FlushOutcome:
    rows: int  # written to the target
    dead: int  # written to dead_letters
    skipped: int  # already stored by another writer
    requests: int = 0  # erasure requests written to governance/erasure_requests


@dataclass(frozen=True)
class Prepared:
    """A validated batch: the target's rows, the dead letters, and the offsets each commit carries."""

    valid: pa.Table
    dead: pa.Table | None
    last_offsets: dict[int, int]  # per partition: the last offset of the batch (target commit)
    dead_last_offsets: dict[int, int]  # per partition holding dead letters (dead_letters commit)
    after: dict[int, int | None] = field(default_factory=dict)  # the offsets the batch follows (RawBatch.after)
    topic_fingerprint: int | None = None
    requests: pa.Table | None = None  # erasure requests (streams with a ``requests_table``)
    requests_last_offsets: dict[int, int] = field(default_factory=dict)  # per partition holding requests


Sinks = tuple[DeltaSink, ...]  # target, dead letters, then the erasure requests' table if the stream has one


def sinks_for(settings: Settings, stream: Stream) -> Sinks:
    """(target, dead letters[, erasure requests]) sinks of ``stream``."""
    opts = storage_options(settings)
    target = DeltaSink(stream.target_uri(settings), stream.schema, table=stream.table, partition_by=stream.partition_by,
                       storage_options=opts)
    dead = DeltaSink(Stream.dead_letters_uri(settings), DEAD_LETTERS_SCHEMA, table=DEAD_LETTERS_TABLE, storage_options=opts)
    if stream.requests_table is None:
        return target, dead
    return target, dead, DeltaSink(table_uri(settings, stream.requests_table), bronze.ERASURE_REQUESTS_SCHEMA,
                                   table=stream.requests_table, storage_options=opts)


def prepare(stream: Stream, raw: RawBatch) -> Prepared:
    """Validate every record of ``raw`` and build the Arrow tables of both commits (no I/O).

    The stream's batch fast path takes the plainly valid records as columns; the model judges the rest
    (row by row). The target's rows come out in (partition, offset) order either way.
    """
    now = datetime.now(timezone.utc)
    fast: pa.Table | None = None
    rest = raw
    if stream.fast_columns is not None and len(raw):
        taken, cols = stream.fast_columns(raw.values, stream.max_bytes, window_us=stream.bounds.window_us(now))
        if taken:
            parts, offsets, stamps = raw.pick(taken)
            fast = bronze.columns_table(stream.schema, stream.time_column, cols, topic=raw.topic, partitions=parts,
                                        offsets=offsets, timestamps_ms=stamps, ingested_at=now)
            rest = raw.without(taken)
    batch = rest.validated(lambda value: stream.to_row(value, now))
    dead = batch.dead_table(now) if batch.dead_offsets else None
    valid = batch.valid_table(stream.schema, stream.row_columns, stream.time_column, now)
    if fast is not None:
        if valid.num_rows:
            valid = pa.concat_tables([fast, valid])
            valid = valid.take(pc.sort_indices(valid, [("kafka_partition", "ascending"), ("kafka_offset", "ascending")]))
        else:
            valid = fast
    requests, requests_last = None, {}
    if stream.requests_table is not None and valid.num_rows:
        valid, requests = bronze.split_erasure_requests(valid)
        if requests is not None:
            requests_last = {p: raw.last_offset[p] for p in set(requests.column("kafka_partition").to_pylist())}
    return Prepared(valid, dead, dict(raw.last_offset), batch.dead_last_offsets(), dict(raw.after),
                    raw.topic_fingerprint, requests, requests_last)


def commit_prepared(stream: Stream, sinks: Sinks, prepared: Prepared, reason: str) -> FlushOutcome:
    """Refuse a gap (``DeltaSink.check_continues``), then erasure requests and dead letters, then the target
    (always: it carries the offsets and the topic's identity). A side table (requests, dead letters) keeps its own
    offsets per partition, so a crash between the commits neither loses nor doubles its rows."""
    target, dead, *side = sinks
    topic, meta = stream.topic, {"lakeloop.stream": stream.name, "lakeloop.flush": reason}
    target.check_continues(topic, prepared.after)  # before the side tables: they too must not skip ahead
    dead_rows = skipped = requests = 0
    if prepared.requests is not None:
        out = side[0].commit(prepared.requests, topic=topic, last_offsets=prepared.requests_last_offsets,
                             metadata=meta, topic_fingerprint=prepared.topic_fingerprint)
        requests, skipped = out.rows, out.skipped_rows
    if prepared.dead is not None:
        out = dead.commit(prepared.dead, topic=topic, last_offsets=prepared.dead_last_offsets, metadata=meta,
                          topic_fingerprint=prepared.topic_fingerprint)
        dead_rows, skipped = out.rows, skipped + out.skipped_rows
    out = target.commit(prepared.valid, topic=topic, last_offsets=prepared.last_offsets, metadata=meta,
                        topic_fingerprint=prepared.topic_fingerprint)
    return FlushOutcome(out.rows, dead_rows, skipped + out.skipped_rows, requests)


def flush(stream: Stream, sinks: Sinks, raw: RawBatch, reason: str) -> FlushOutcome:
    """Prepare ``raw`` and commit it: one whole flush."""
    return commit_prepared(stream, sinks, prepare(stream, raw), reason)


class Flusher:
    """Flushes batches: in worker processes (the committers) or inline on the caller's thread.

    Process mode runs ``workers`` single-process pools. Batch n goes to worker n mod ``workers``: the
    workers prepare (validate, build Arrow tables) in parallel and commit strictly in batch order, each
    waiting for its turn (a shared counter of the last committed batch). Once a flush fails, every later
    one is refused (``OffsetError``) until a new Flusher starts: the ingestor stops and its restart seeks
    from the offsets stored in Delta. (The commit's gap check would refuse an out-of-order batch anyway.)"""

    def __init__(self, settings: Settings, stream: Stream, *, mode: FlushMode = "process", workers: int = 1,
                 fault: Callable[[RawBatch, str], None] | None = None) -> None:
        """``fault``: fault injection for tests, called with each batch before it is flushed (a module-level
        function in process mode); what it raises is that flush's failure."""
        if workers < 1:
            raise ValueError(f"a flusher needs at least one worker, got {workers}")
        self.mode = mode
        self._stream = stream
        self._fault = fault
        self._failed: str | None = None  # inline mode: the first failure (the workers share their own flag)
        self._pools: list[ProcessPoolExecutor] = []
        self._seq = 0
        self._sinks: Sinks | None = None  # inline mode only: the workers have their own
        if mode == "thread":
            self._sinks = sinks_for(settings, stream)
            return
        self._segments = Segments()  # what the batches' values travel in (feedback.handoff)
        self._to_ship: queue.SimpleQueue = queue.SimpleQueue()
        ctx = multiprocessing.get_context("spawn")
        # the turn: the sequence number of the last committed batch, and whether a flush failed
        self._turn = ctx.Condition()
        self._committed = ctx.Value("q", -1, lock=False)
        self._broken = ctx.Value("b", 0, lock=False)
        for _ in range(workers):
            self._pools.append(ProcessPoolExecutor(
                max_workers=1, mp_context=ctx, initializer=_worker_init,
                initargs=(settings, stream.name, stream.topic, os.getpid(), fault,
                          (self._turn, self._committed, self._broken)),
            ))
        self._ready = [pool.submit(_worker_ready) for pool in self._pools]
        self._shipper = threading.Thread(target=self._ship, name="lakeloop-shipper", daemon=True)
        self._shipper.start()

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Wait until the workers have booted (imports, tables opened, Arrow kernels): start-up, not throughput."""
        for ready in getattr(self, "_ready", []):
            ready.result(timeout=timeout_s)

    def start(self, raw: RawBatch, reason: str) -> Future[FlushOutcome] | RawBatch:
        """Begin flushing ``raw`` (queued to a worker at once); pass the result to ``finish``, in order.

        Process mode: the shipping thread copies the values to shared memory and queues the batch to its
        worker, in the order of ``start``; the caller (the consumer loop) goes on at once."""
        if not self._pools:
            return raw
        seq, self._seq = self._seq, self._seq + 1
        started: Future[FlushOutcome] = Future()
        self._to_ship.put((seq, raw, reason, started))
        return started

    def _ship(self) -> None:
        """The shipping thread: each started batch, in order, to its worker (``feedback.handoff``)."""
        while (item := self._to_ship.get()) is not None:
            seq, raw, reason, started = item
            if not started.set_running_or_notify_cancel():
                continue
            segment = None
            try:
                shipped, ticket, segment = self._segments.ship(raw)  # the values into shared memory (big batches)
                flushed = self._pools[seq % len(self._pools)].submit(_worker_flush, shipped, reason, seq, ticket)
            except BaseException as exc:  # noqa: BLE001 - that flush's failure, for finish()
                if segment is not None:
                    self._segments.give_back(segment)
                started.set_exception(exc)
                continue
            if segment is not None:  # lent until the flush has finished: the worker reads it only meanwhile
                flushed.add_done_callback(lambda _, segment=segment: self._segments.give_back(segment))
            flushed.add_done_callback(lambda done, started=started: _pass_on(done, started))

    def finish(self, started: Future[FlushOutcome] | RawBatch, reason: str) -> FlushOutcome:
        """Wait for a started flush to be committed (inline: do it now). One caller at a time."""
        if isinstance(started, RawBatch):
            assert self._sinks is not None
            if self._failed is not None:
                raise OffsetError(f"refused a batch of {started.topic}: an earlier flush failed ({self._failed})",
                                  hint="restart the ingestor: it seeks from the offsets stored in Delta")
            try:
                if self._fault is not None:
                    self._fault(started, reason)
                return flush(self._stream, self._sinks, started, reason)
            except BaseException as exc:
                self._failed = f"{type(exc).__name__}: {str(exc)[:200]}"
                raise
        return started.result()

    def close(self) -> None:
        if self._pools:
            self._to_ship.put(None)  # what was started is queued to the workers first
            self._shipper.join()
            with self._turn:  # a worker waiting for the turn of a batch that will never commit: let it go
                self._broken.value = 1
                self._turn.notify_all()
            for pool in self._pools:
                pool.shutdown(wait=True, cancel_futures=True)
            self._pools = []
            self._segments.close()


def _pass_on(done: Future[FlushOutcome], started: Future[FlushOutcome]) -> None:
    """The worker's outcome (``done``) becomes the outcome of the future ``start`` returned."""
    if done.cancelled():
        started.set_exception(CancelledError())
    elif (exc := done.exception()) is not None:
        started.set_exception(exc)
    else:
        started.set_result(done.result())


# ---- the worker process -------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _worker_init(settings: Settings, stream_name: Any, topic: str, parent_pid: int,
                 fault: Callable[[RawBatch, str], None] | None, turn: tuple[Any, Any, Any]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _yield_to_the_consumer()
    keep_big_buffers()  # a batch's Arrow and Parquet buffers reused from the heap (feedback.allocator)
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), name="lakeloop-parent-watch", daemon=True).start()
    stream = get_stream(settings, stream_name, topic=topic)
    _WORKER["stream"] = stream
    _WORKER["sinks"] = sinks_for(settings, stream)
    _WORKER["fault"] = fault
    _WORKER["turn"], _WORKER["committed"], _WORKER["broken"] = turn
    _WORKER["parent"] = parent_pid
    _WORKER["mappings"] = Mappings()


WORKER_NICE = 5


def _yield_to_the_consumer() -> None:
    """Run the worker in a session of its own (with the kernel's autogroup scheduling, a CPU share of its
    own) at a lower priority than the consumer. The workers hold queued batches; the consumer is the
    pipeline's bottleneck once two workers share the preparing (on 2 cores, with four equal shares it
    got half a core: ~59k/s at ~8.5 us per record), so it must run whenever it can."""
    try:
        os.setsid()
    except OSError:
        pass
    try:
        with open("/proc/self/autogroup", "w") as f:  # the session's group: nice applies between groups
            f.write(str(WORKER_NICE))
    except OSError:
        try:
            os.nice(WORKER_NICE)  # no autogroups: plain nice
        except OSError:
            pass


def _exit_with_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(0)  # a commit cut short here either landed whole or not at all; the next owner re-reads


def _worker_ready() -> bool:
    stream = _WORKER["stream"]
    for sink in _WORKER["sinks"]:
        sink.open()
    prepare(stream, RawBatch(stream.topic))  # warm up Arrow's compute kernels
    # what the worker keeps (modules, tables) is never scanned again, and fewer collections: a batch
    # allocates ~12k decoded events (no cycles), which with the default threshold (700) meant ~20 passes
    # per batch and now and then a full one over every module's objects (~0.6 us per record, measured)
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    return True


def _worker_flush(raw: RawBatch, reason: str, seq: int, ticket: Ticket | None = None) -> FlushOutcome:
    """Flush batch ``seq`` in a worker: prepare at once (in parallel with the other workers), then commit
    when batch ``seq - 1`` has committed. After a failed flush every later batch is refused: the ingestor
    queues batch k+1 before it knows k's fate, and k+1 must not commit offsets past k's records.
    ``ticket``: where the batch's values wait in shared memory (else they came with ``raw``)."""
    turn, committed, broken = _WORKER["turn"], _WORKER["committed"], _WORKER["broken"]
    sinks = _WORKER["sinks"]
    stream = _WORKER["stream"]
    try:
        if ticket is not None:
            raw.values = _WORKER["mappings"].values(ticket)
        if broken.value:
            raise _refused(raw)
        fault = _WORKER.get("fault")
        if fault is not None:
            fault(raw, reason)
        prepared = prepare(stream, raw)
        with turn:
            while committed.value != seq - 1 and not broken.value:
                turn.wait(0.5)
                if os.getppid() != _WORKER["parent"]:
                    os._exit(0)
            if broken.value:
                raise _refused(raw)
        out = commit_prepared(stream, sinks, prepared, reason)
    except BaseException:
        with turn:
            broken.value = 1
            turn.notify_all()
        raise
    with turn:
        committed.value = seq
        turn.notify_all()
    return out


def _refused(raw: RawBatch) -> OffsetError:
    return OffsetError(
        f"refused a batch of {raw.topic}: an earlier flush failed, and this one would skip its records",
        hint="restart the ingestor: it seeks from the offsets stored in Delta and reads those records again",
    )
