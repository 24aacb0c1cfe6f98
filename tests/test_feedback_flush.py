"""A flush (feedback.flush) commits the same rows and offsets whether it runs in the worker process or
inline; a RawBatch survives the trip to the worker; an error in the worker keeps its hint."""

from __future__ import annotations

import pickle

import pytest
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

from feedback.batch import RawBatch
from feedback.delta_sink import app_id
from feedback.flush import Flusher, prepare
from feedback.streams import Stream, get_stream
from infra.errors import DataError
from infra.settings import Settings
from tests.test_feedback_corpus import CORPUS, dumps, valid_event


def _raw_batch() -> RawBatch:
    raw = RawBatch("t")
    values = [dumps(valid_event(i)) for i in range(50)] + [b.raw for b in CORPUS] + [None]
    for offset, value in enumerate(values):
        raw.add(offset % 3, offset, 1_767_600_000_000 + offset, value)
    return raw


def test_raw_batch_pickles_as_one_blob_and_comes_back_equal() -> None:
    raw = _raw_batch()
    assert pickle.loads(pickle.dumps(raw)) == raw


def _without_ingested_at(table):
    return table.drop_columns(["ingested_at"])


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_flusher_commits_the_prepared_rows_with_offsets(settings: Settings, mode: str) -> None:
    stream = get_stream(settings, "feedback", topic="t")
    raw = _raw_batch()
    expected = prepare(stream, raw)
    assert expected.valid.num_rows == 50 and expected.dead is not None and expected.dead.num_rows == len(CORPUS) + 1
    flusher = Flusher(settings, stream, mode=mode)  # type: ignore[arg-type]
    try:
        flusher.wait_ready()
        out = flusher.finish(flusher.start(raw, "test"), "test")
    finally:
        flusher.close()
    assert (out.rows, out.dead, out.skipped) == (50, len(CORPUS) + 1, 0)
    target = DeltaTable(stream.target_uri(settings))
    got = target.to_pyarrow_table().sort_by("kafka_offset").select(expected.valid.column_names)
    assert _without_ingested_at(got).equals(_without_ingested_at(expected.valid))
    assert {p: target.transaction_version(app_id(stream.table, "t", p)) for p in range(3)} == raw.last_offset
    dead = DeltaTable(Stream.dead_letters_uri(settings)).to_pyarrow_table()
    assert sorted(dead.column("kafka_offset").to_pylist()) == sorted(expected.dead.column("kafka_offset").to_pylist())


def test_an_error_in_the_worker_reaches_the_caller_with_its_hint(settings: Settings) -> None:
    """A target that is not a lakeloop table: the worker's DataError comes back whole."""
    stream = get_stream(settings, "feedback", topic="t")
    write_deltalake(stream.target_uri(settings), pa.table({"x": [1]}))
    flusher = Flusher(settings, stream, mode="process")
    try:
        with pytest.raises(DataError) as exc:
            flusher.wait_ready()
    finally:
        flusher.close()
    assert "bronze schema" in exc.value.message and exc.value.hint and "LAKELOOP_LAKE_ROOT" in exc.value.hint
