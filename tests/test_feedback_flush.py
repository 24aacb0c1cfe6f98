"""The two steps of a flush (feedback.flush): ``prepare`` gives the same tables in a worker process as
inline, and ``finish`` commits them with the offsets; a RawBatch survives the trip to the worker."""

from __future__ import annotations

import pickle

import pytest
from deltalake import DeltaTable

from feedback.batch import RawBatch
from feedback.delta_sink import app_id
from feedback.flush import Flusher, prepare
from feedback.streams import get_stream
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
def test_flusher_prepares_like_inline_and_commits_with_offsets(settings: Settings, mode: str) -> None:
    stream = get_stream(settings, "feedback", topic="t")
    raw = _raw_batch()
    expected = prepare(stream, raw)
    assert expected.valid.num_rows == 50 and expected.dead is not None and expected.dead.num_rows == len(CORPUS) + 1
    flusher = Flusher(settings, stream, mode=mode)  # type: ignore[arg-type]
    try:
        flusher.wait_ready()
        started = flusher.start(raw)
        if mode == "process":
            got = started.result()  # type: ignore[union-attr]
            assert _without_ingested_at(got.valid).equals(_without_ingested_at(expected.valid))
            assert _without_ingested_at(got.dead).equals(_without_ingested_at(expected.dead))
        out = flusher.finish(started, "test")  # type: ignore[arg-type]
    finally:
        flusher.close()
    assert (out.rows, out.dead, out.skipped) == (50, len(CORPUS) + 1, 0)
    target = DeltaTable(stream.target_uri(settings))
    assert target.to_pyarrow_table().num_rows == 50
    assert {p: target.transaction_version(app_id(stream.table, "t", p)) for p in range(3)} == raw.last_offset
