"""Faults inside a flush: one record's exception is that record's dead letter; a failed flush never lets
a later batch past it (the worker refuses it, and the commit refuses any gap); a restart then loses and
doubles nothing. No services: the flusher writes real Delta tables under tmp_path."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest
from deltalake import DeltaTable

from feedback.batch import RawBatch
from feedback.delta_sink import app_id
from feedback.flush import Flusher, prepare
from feedback.streams import Stream, get_stream
from infra.errors import OffsetError, ServiceError
from infra.settings import Settings
from tests.test_feedback_corpus import dumps, valid_event

MARKER_ENV = "LAKELOOP_TEST_FAULT_MARKER"


def batch(first: int, n: int, *, after: int | None, partitions: int = 2, bad_every: int = 7) -> RawBatch:
    """Records ``first .. first+n-1`` spread over ``partitions`` (offset = index // partitions); every
    ``bad_every``-th is malformed, so both tables are written."""
    raw = RawBatch("t")
    for i in range(first, first + n):
        value = b"not json" if i % bad_every == 0 else dumps(valid_event(i))
        raw.add(i % partitions, i // partitions, 1_767_600_000_000, value)
    raw.after = {p: after for p in raw.last_offset}
    return raw


def fail_when_told(raw: RawBatch, reason: str) -> None:
    """Fault for the worker: the batch flushed with reason 'fail' waits until the test has queued the next
    batch (a marker file appears), then fails like a full disk."""
    if reason != "fail":
        return
    marker = Path(os.environ[MARKER_ENV])
    deadline = time.monotonic() + 60
    while not marker.exists():
        if time.monotonic() > deadline:
            raise AssertionError("the test never queued the next batch")
        time.sleep(0.01)
    raise OSError(28, "No space left on device (injected)")


def landed(settings: Settings, stream: Stream) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(partition, offset) of every row of the target and of the dead letters, sorted, duplicates kept."""
    out = []
    for uri in (stream.target_uri(settings), Stream.dead_letters_uri(settings)):
        try:
            t = DeltaTable(uri).to_pyarrow_table(columns=["kafka_partition", "kafka_offset"])
        except Exception:  # noqa: BLE001 - table not created yet: nothing landed
            out.append([])
            continue
        out.append(sorted(zip(t.column("kafka_partition").to_pylist(), t.column("kafka_offset").to_pylist())))
    return out[0], out[1]


@pytest.mark.parametrize(("mode", "workers"), [("process", 1), ("process", 2), ("thread", 1)])
def test_a_failed_flush_refuses_the_batch_queued_behind_it_and_a_restart_loses_nothing(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, workers: int) -> None:
    marker = tmp_path / "queued"
    monkeypatch.setenv(MARKER_ENV, str(marker))  # the spawned worker inherits it
    stream = get_stream(settings, "feedback", topic="t")
    b0 = batch(0, 40, after=None)
    b1 = batch(40, 40, after=19)  # k: fails inside the worker
    b2 = batch(80, 40, after=39)  # k+1: already queued when k fails
    flusher = Flusher(settings, stream, mode=mode, workers=workers, fault=fail_when_told)  # type: ignore[arg-type]
    try:
        flusher.wait_ready()
        flusher.finish(flusher.start(b0, "ok"), "ok")
        k = flusher.start(b1, "fail")
        if mode == "process":
            k1 = flusher.start(b2, "next")  # queued to a worker before k's fate is known
            marker.touch()
            with pytest.raises(OSError, match="No space left"):
                flusher.finish(k, "fail")
            with pytest.raises(OffsetError, match="earlier flush failed"):
                flusher.finish(k1, "next")
        else:
            marker.touch()
            with pytest.raises(OSError, match="No space left"):
                flusher.finish(k, "fail")
            with pytest.raises(OffsetError, match="earlier flush failed"):
                flusher.finish(flusher.start(b2, "next"), "next")
    finally:
        flusher.close()
    rows, dead = landed(settings, stream)
    assert sorted(rows + dead) == sorted((i % 2, i // 2) for i in range(40))  # only batch 0
    target = DeltaTable(stream.target_uri(settings))
    assert {p: target.transaction_version(app_id(stream.table, "t", p)) for p in (0, 1)} == {0: 19, 1: 19}

    # the restart seeks from the stored offsets (19): it reads batches 1 and 2 again
    again = Flusher(settings, stream, mode=mode, workers=workers)  # type: ignore[arg-type]
    try:
        again.wait_ready()
        again.finish(again.start(batch(40, 40, after=19), "retry"), "retry")
        again.finish(again.start(batch(80, 40, after=39), "retry"), "retry")
    finally:
        again.close()
    rows, dead = landed(settings, stream)
    assert sorted(rows + dead) == sorted((i % 2, i // 2) for i in range(120))  # each record once
    assert len(dead) == len([i for i in range(120) if i % 7 == 0])


def test_the_commit_refuses_a_batch_whose_predecessor_did_not_land(settings: Settings) -> None:
    """Another process (an orphaned worker, an old ingestor) holding batch k+1 of a failed k: refused,
    before even its dead letters are written."""
    stream = get_stream(settings, "feedback", topic="t")
    flusher = Flusher(settings, stream, mode="thread")
    try:
        flusher.finish(flusher.start(batch(0, 40, after=None), "ok"), "ok")  # stores 19 per partition
        with pytest.raises(OffsetError, match=r"p0: stored 19, batch follows 39") as exc:
            flusher.finish(flusher.start(batch(80, 40, after=39), "gap"), "gap")
        assert "restart the ingestor" in (exc.value.hint or "")
    finally:
        flusher.close()
    rows, dead = landed(settings, stream)
    assert sorted(rows + dead) == sorted((i % 2, i // 2) for i in range(40))


def test_a_batch_that_overlaps_the_stored_offsets_is_not_a_gap(settings: Settings) -> None:
    """A zombie after a rebalance re-sends records the new owner stored: filtered, not refused."""
    stream = get_stream(settings, "feedback", topic="t")
    flusher = Flusher(settings, stream, mode="thread")
    try:
        flusher.finish(flusher.start(batch(0, 80, after=None), "ok"), "ok")  # stores 39
        out = flusher.finish(flusher.start(batch(40, 60, after=19), "zombie"), "zombie")
    finally:
        flusher.close()
    assert out.rows + out.dead == 20 and out.skipped > 0
    rows, dead = landed(settings, stream)
    assert sorted(rows + dead) == sorted((i % 2, i // 2) for i in range(100))


@pytest.mark.parametrize("error", [RecursionError, MemoryError, OverflowError, UnicodeError, ValueError, KeyError])
def test_any_exception_while_converting_one_record_makes_it_a_dead_letter(settings: Settings, error: type) -> None:
    """The row builder raising for one record: that record is a dead letter with the exception's name, the
    batch lands. (No record of the corpus does this any more; this proves the net below the model.)"""
    stream = get_stream(settings, "feedback", topic="t")
    cursed = "evt-0000013"

    def row(model):
        if model.event_id == cursed:
            raise error("injected")
        return stream.row(model)

    faulty = dataclasses.replace(stream, row=row, fast_columns=None)  # the model path for every record
    raw = RawBatch("t")
    raw.extend(0, list(range(30)), [0] * 30, [dumps(valid_event(i)) for i in range(30)])
    out = prepare(faulty, raw)
    assert out.valid.num_rows == 29 and out.dead is not None and out.dead.num_rows == 1
    dead = out.dead.to_pylist()[0]
    assert dead["kafka_offset"] == 13 and dead["stage"] == "validate" and error.__name__ in dead["reason"]


def test_the_fast_path_survives_any_exception_of_its_decoder(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    """msgspec raising RecursionError (what a 5,000-deep array did) or anything else: the model judges."""
    import feedback.fast_events as fast

    calls = {"n": 0}
    real = fast._decode

    def decode(raw: bytes):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RecursionError("maximum recursion depth exceeded while deserializing an object")
        return real(raw)

    monkeypatch.setattr(fast, "_decode", decode)
    stream = get_stream(settings, "feedback", topic="t")
    raw = RawBatch("t")
    raw.extend(0, list(range(10)), [0] * 10, [dumps(valid_event(i)) for i in range(10)])
    out = prepare(stream, raw)
    assert out.valid.num_rows == 10 and out.dead is None  # the third record went to the model, which took it


def test_two_workers_commit_in_batch_order(settings: Settings) -> None:
    """Batches prepared in parallel by two workers still commit in order: the stored offsets only grow and
    every record lands once (the gap check would refuse an out-of-order commit)."""
    stream = get_stream(settings, "feedback", topic="t")
    flusher = Flusher(settings, stream, mode="process", workers=2)
    try:
        flusher.wait_ready()
        started = [flusher.start(batch(40 * k, 40, after=None if k == 0 else 20 * k - 1), "ok") for k in range(8)]
        outs = [flusher.finish(f, "ok") for f in started]
    finally:
        flusher.close()
    assert sum(o.rows + o.dead for o in outs) == 320
    rows, dead = landed(settings, stream)
    assert sorted(rows + dead) == sorted((i % 2, i // 2) for i in range(320))
    commits = [v for v in DeltaTable(stream.target_uri(settings)).history() if v.get("lakeloop.flush") == "ok"]
    assert len(commits) == 8  # one target commit per batch, none refused as out of order


class _FlakyConsumer:
    """A consumer whose poll raises what kafka-python raises while the broker is down."""

    def __init__(self, errors: list[BaseException]) -> None:
        self.errors = errors

    def poll(self, *, timeout_ms: int, max_records: int) -> dict:
        if self.errors:
            raise self.errors.pop(0)
        return {"tp": ["record"]}


def test_poll_rides_out_a_broker_outage_and_gives_up_only_in_a_catch_up_run(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The broker-kill test against the real broker hits this path only when poll raises during the outage
    (timing): here it is deterministic. Retriable errors wait; others propagate; --once gives up."""
    from kafka.errors import CommitFailedError, KafkaConnectionError

    import feedback.ingestor as ingestor_module
    from feedback.ingestor import Ingestor

    said: list[str] = []
    monkeypatch.setattr(ingestor_module.time, "sleep", lambda s: None)
    ing = Ingestor(settings, get_stream(settings, "feedback", topic="t"), say=said.append)
    consumer = _FlakyConsumer([KafkaConnectionError("111 ECONNREFUSED"), KafkaConnectionError("111 ECONNREFUSED")])
    assert ing._poll(consumer, timeout_ms=10, max_records=10, once=False) == {}
    assert ing._poll(consumer, timeout_ms=10, max_records=10, once=False) == {}
    assert ing._poll(consumer, timeout_ms=10, max_records=10, once=False) == {"tp": ["record"]}
    assert [m.split(" is ")[1][:11] for m in said] == ["unreachable", "back (first"]  # one line each, not per error

    with pytest.raises(CommitFailedError):  # not retriable: the loop stops loudly
        ing._poll(_FlakyConsumer([CommitFailedError("no")]), timeout_ms=10, max_records=10, once=False)

    monkeypatch.setattr(ingestor_module, "BROKER_WAIT_ONCE_S", -1.0)
    with pytest.raises(ServiceError, match="unreachable for") as exc:
        ing._poll(_FlakyConsumer([KafkaConnectionError("down")]), timeout_ms=10, max_records=10, once=True)
    assert "lakeloop up" in (exc.value.hint or "")
