"""A flush in two steps: ``prepare`` (validate, build Arrow tables; pure CPU) and ``commit_prepared``
(the two commits of the offset protocol: dead letters first, then the target with the offsets).

Where ``prepare`` runs is a choice (``FlushMode``). ``"thread"`` (default): on the ingestor's writer
thread, sharing the GIL with the consumer loop. ``"process"``: in one spawned worker process, so that
kafka-python's record parsing and our validation could use both cores: the loop hands over value bytes and Kafka coordinates and
gets Arrow tables back. The worker is a pure function of its input: it holds no table and commits
nothing, so the offset protocol runs unchanged in the ingestor's process (its writer thread, where
delta-rs writes Parquet without the GIL). ``prepare`` of the next batch overlaps the commit of the
last one. The worker ignores SIGINT/SIGTERM (the ingestor decides when to stop) and exits when the
ingestor is gone. Measured on the shared, loaded 2-core machine, shipping the records and tables
between processes and the competition for CPU cost more than the parallelism gains, so ``"thread"`` is
the default (docs/design/ingestion.md, section 7).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

import pyarrow as pa

from feedback.batch import RawBatch
from feedback.bronze import DEAD_LETTERS_SCHEMA
from feedback.delta_sink import DeltaSink
from feedback.streams import DEAD_LETTERS_TABLE, Stream, get_stream
from infra.settings import Settings

FlushMode = Literal["process", "thread"]


@dataclass(frozen=True)
class FlushOutcome:
    rows: int  # written to the target
    dead: int  # written to dead_letters
    skipped: int  # already stored by another writer


@dataclass(frozen=True)
class Prepared:
    """A validated batch: the target's rows, the dead letters, and the offsets each commit carries."""

    valid: pa.Table
    dead: pa.Table | None
    last_offsets: dict[int, int]  # per partition: the last offset of the batch (target commit)
    dead_last_offsets: dict[int, int]  # per partition holding dead letters (dead_letters commit)


def sinks_for(settings: Settings, stream: Stream) -> tuple[DeltaSink, DeltaSink]:
    """(target, dead letters) sinks of ``stream``."""
    target = DeltaSink(stream.target_uri(settings), stream.schema, table=stream.table, partition_by=stream.partition_by)
    return target, DeltaSink(Stream.dead_letters_uri(settings), DEAD_LETTERS_SCHEMA, table=DEAD_LETTERS_TABLE)


def prepare(stream: Stream, raw: RawBatch) -> Prepared:
    """Validate every record of ``raw`` and build the Arrow tables of both commits (no I/O)."""
    batch = raw.validated(stream.to_row)
    now = datetime.now(timezone.utc)
    dead = batch.dead_table(now) if batch.dead_offsets else None
    valid = batch.valid_table(stream.schema, stream.row_columns, stream.time_column, now)
    return Prepared(valid, dead, dict(batch.last_offset), batch.dead_last_offsets())


def commit_prepared(stream: Stream, target: DeltaSink, dead: DeltaSink, prepared: Prepared, reason: str) -> FlushOutcome:
    """Dead letters first, then the target (always: it carries the offsets)."""
    topic, meta = stream.topic, {"lakeloop.stream": stream.name, "lakeloop.flush": reason}
    dead_rows = skipped = 0
    if prepared.dead is not None:
        out = dead.commit(prepared.dead, topic=topic, last_offsets=prepared.dead_last_offsets, metadata=meta)
        dead_rows, skipped = out.rows, out.skipped_rows
    out = target.commit(prepared.valid, topic=topic, last_offsets=prepared.last_offsets, metadata=meta)
    return FlushOutcome(out.rows, dead_rows, skipped + out.skipped_rows)


class Flusher:
    """Prepares batches (in a worker process or inline) and commits them through its own sinks."""

    def __init__(self, settings: Settings, stream: Stream, *, mode: FlushMode = "thread") -> None:
        self.mode = mode
        self._stream = stream
        self._target, self._dead = sinks_for(settings, stream)
        self._pool: ProcessPoolExecutor | None = None
        if mode == "process":
            self._pool = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                initargs=(settings, stream.name, stream.topic, os.getpid()),
            )
            self._ready = self._pool.submit(_worker_ready)

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Wait until the worker has booted (imports, Arrow kernels): start-up, not throughput."""
        if self._pool is not None:
            self._ready.result(timeout=timeout_s)

    def start(self, raw: RawBatch) -> Future[Prepared] | RawBatch:
        """Begin preparing ``raw`` (queued to the worker at once); pass the result to ``finish``."""
        return raw if self._pool is None else self._pool.submit(_worker_prepare, raw)

    def finish(self, started: Future[Prepared] | RawBatch, reason: str) -> FlushOutcome:
        """Wait for the prepared batch and commit it. One caller at a time (the writer thread)."""
        prepared = prepare(self._stream, started) if isinstance(started, RawBatch) else started.result()
        return commit_prepared(self._stream, self._target, self._dead, prepared, reason)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


# ---- the worker process -------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _worker_init(settings: Settings, stream_name: Any, topic: str, parent_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.setsid()  # its own session: with the kernel's autogroup scheduling, a CPU share of its own
    except OSError:
        pass
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), name="lakeloop-parent-watch", daemon=True).start()
    _WORKER["stream"] = get_stream(settings, stream_name, topic=topic)


def _exit_with_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(0)


def _worker_ready() -> bool:
    prepare(_WORKER["stream"], RawBatch(_WORKER["stream"].topic))  # warm up Arrow's compute kernels
    return True


def _worker_prepare(raw: RawBatch) -> Prepared:
    return prepare(_WORKER["stream"], raw)
