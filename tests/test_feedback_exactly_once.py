"""The exactly-once check used by the Kafka tests, and proof that it can fail.

``exactly_once_violations`` compares what the bronze tables hold with what Kafka holds. The race tests
show that the DeltaSink (check the stored version, write through the same DeltaTable) survives a racing
writer, while the naive way (write by path) doubles rows -- and that the check catches it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

from feedback import bronze
from feedback.delta_sink import DeltaSink, app_id
from infra.errors import ConfigError, DataError

Coord = tuple[int, int]  # (partition, offset)


def exactly_once_violations(target_rows: list[dict], dead_rows: list[dict], expected_valid: Mapping[Coord, str],
                            expected_dead: Mapping[Coord, bytes]) -> list[str]:
    """Everything wrong with the tables: doubled, missing, unexpected or altered rows (empty list = exactly once)."""
    problems: list[str] = []
    for name, rows, expected in (("target", target_rows, expected_valid), ("dead_letters", dead_rows, expected_dead)):
        coords = Counter((r["kafka_partition"], r["kafka_offset"]) for r in rows)
        doubled = sorted(c for c, n in coords.items() if n > 1)
        missing = sorted(set(expected) - set(coords))
        extra = sorted(set(coords) - set(expected))
        altered = sorted((r["kafka_partition"], r["kafka_offset"]) for r in rows
                         if (r["kafka_partition"], r["kafka_offset"]) in expected
                         and r["raw"] != expected[(r["kafka_partition"], r["kafka_offset"])])
        for label, items in (("doubled", doubled), ("missing", missing), ("unexpected", extra), ("altered", altered)):
            if items:
                problems.append(f"{name}: {len(items)} {label} (partition, offset), e.g. {items[:5]}")
    return problems


def table_rows(uri: str, columns: tuple[str, ...] = ("kafka_partition", "kafka_offset", "raw")) -> list[dict]:
    if not DeltaTable.is_deltatable(uri):
        return []
    return DeltaTable(uri).to_pyarrow_table(columns=list(columns)).to_pylist()


# ---- helpers ------------------------------------------------------------------------------------
TOPIC = "t"


def dead_batch(partition: int, offsets: range) -> pa.Table:
    n = len(offsets)
    return bronze.dead_letters_table(
        [f"raw-{o}".encode() for o in offsets], ["decode"] * n, ["bad"] * n, topic=TOPIC, partitions=[partition] * n,
        offsets=list(offsets), timestamps_ms=[None] * n, ingested_at=datetime.now(timezone.utc),
    )


def sink(path: Path) -> DeltaSink:
    return DeltaSink(str(path), bronze.DEAD_LETTERS_SCHEMA, table="bronze/dead_letters")


def expected(partition: int, offsets: range) -> dict[Coord, bytes]:
    return {(partition, o): f"raw-{o}".encode() for o in offsets}


# ---- the sink -----------------------------------------------------------------------------------
def test_replaying_a_batch_writes_nothing_twice(tmp_path: Path) -> None:
    s = sink(tmp_path / "dl")
    first = s.commit(dead_batch(0, range(0, 100)), topic=TOPIC, last_offsets={0: 99})
    again = s.commit(dead_batch(0, range(0, 100)), topic=TOPIC, last_offsets={0: 99})
    overlap = s.commit(dead_batch(0, range(50, 150)), topic=TOPIC, last_offsets={0: 149})
    assert (first.rows, again.rows, again.version, overlap.rows, overlap.skipped_rows) == (100, 0, None, 50, 50)
    assert s.stored_offsets(TOPIC, [0, 1]) == {0: 149, 1: None}
    rows = table_rows(str(tmp_path / "dl"))
    assert exactly_once_violations([], rows, {}, expected(0, range(150))) == []


def test_an_empty_commit_still_advances_the_offset(tmp_path: Path) -> None:
    s = sink(tmp_path / "dl")
    out = s.commit(dead_batch(2, range(0)), topic=TOPIC, last_offsets={2: 41})
    assert out.version == 1 and out.rows == 0
    assert DeltaTable(str(tmp_path / "dl")).transaction_version(app_id("bronze/dead_letters", TOPIC, 2)) == 41


def test_a_racing_writer_makes_the_stale_commit_fail_and_filter_instead_of_doubling(tmp_path: Path) -> None:
    uri = tmp_path / "dl"
    a, b = sink(uri), sink(uri)
    a.open(), b.open()  # both read version 0
    b._dt.update_incremental = lambda: None  # b stays on its stale snapshot, as if it read just before a committed
    a.commit(dead_batch(0, range(0, 100)), topic=TOPIC, last_offsets={0: 99})
    out = b.commit(dead_batch(0, range(50, 150)), topic=TOPIC, last_offsets={0: 149})
    assert out.attempts == 2 and out.rows == 50  # the first attempt lost the race; the retry re-read offset 99
    assert exactly_once_violations([], table_rows(str(uri)), {}, expected(0, range(150))) == []


def test_other_partitions_do_not_conflict(tmp_path: Path) -> None:
    uri = tmp_path / "dl"
    a, b = sink(uri), sink(uri)
    a.open(), b.open()
    b._dt.update_incremental = lambda: None
    a.commit(dead_batch(0, range(0, 10)), topic=TOPIC, last_offsets={0: 9})
    out = b.commit(dead_batch(1, range(0, 10)), topic=TOPIC, last_offsets={1: 9})
    assert out.attempts == 1 and out.rows == 10
    assert exactly_once_violations([], table_rows(str(uri)), {}, {**expected(0, range(10)), **expected(1, range(10))}) == []


def test_the_check_catches_doubling_when_writing_by_path(tmp_path: Path) -> None:
    """The same race, written the naive way (read the version, then write by path): rows are doubled, and the
    exactly-once check used by the Kafka tests reports it. So a passing Kafka test means something."""
    uri = str(tmp_path / "dl")
    sink(tmp_path / "dl").open()
    aid = app_id("bronze/dead_letters", TOPIC, 0)
    stale_version = DeltaTable(uri).transaction_version(aid)  # writer b reads: nothing stored yet
    write_deltalake(uri, dead_batch(0, range(0, 100)), mode="append",
                    commit_properties=CommitProperties(app_transactions=[Transaction(aid, 99)]))  # writer a
    keep = dead_batch(0, range(50, 150))  # b filtered by its stale version (None): keeps everything
    assert stale_version is None
    write_deltalake(uri, keep, mode="append", commit_properties=CommitProperties(app_transactions=[Transaction(aid, 149)]))
    problems = exactly_once_violations([], table_rows(uri), {}, expected(0, range(150)))
    assert problems and "50 doubled" in problems[0], problems


# ---- refusing to start --------------------------------------------------------------------------
def test_refuses_a_table_that_can_expire_its_offsets(tmp_path: Path) -> None:
    DeltaTable.create(str(tmp_path / "dl"), bronze.DEAD_LETTERS_SCHEMA,
                      configuration={"delta.setTransactionRetentionDuration": "interval 7 days"})
    with pytest.raises(ConfigError, match="setTransactionRetentionDuration"):
        sink(tmp_path / "dl").open()


def test_refuses_a_table_with_another_schema(tmp_path: Path) -> None:
    DeltaTable.create(str(tmp_path / "dl"), pa.schema([("raw", pa.string())]))
    with pytest.raises(DataError, match="bronze schema"):
        sink(tmp_path / "dl").open()
