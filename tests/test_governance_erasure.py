"""Issue 17: erasure. `lakeloop forget` takes one user's rows out of every table (bronze, parseable dead letters,
predictions, silver, gold, the MinHash index), records it without the raw id, tags the registered model versions that
learned from the rows, and after the grace deletes every file that held them, pinned gold versions included.

Real Delta tables, built by the real local curation from qa_feedback events; the real MLflow server of the session.
The user's rows sit in the current versions and in files only older versions hold (day 0 is curated twice)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable, write_deltalake
from typer.testing import CliRunner

from features import lake
from features import lineage as L
from features.config import CurationConfig
from features.engine import STAGES, curate
from features.erasure import erasure_versions, forget, records, vacuum_due
from features.erasure import footprint as F
from features.erasure.erase import predicate
from features.erasure.storage import data_files
from features.pseudonymize import KeyMismatchError, pseudonymize
from feedback import bronze as B
from feedback.maintenance import optimize_tables
from infra.errors import ServiceError
from infra.ports import free_port
from infra.settings import Settings, load_settings
from infra.tables import table_uri
from tests.curation_fixtures import START, qa_events, write_bronze
from trainers.pinning import CheckEval, checked_version

KEY = b"erasure-test-key-0123456789abcdef"
USER = "user-00"  # question 0, day 0: the smallest user id of its day, so it is in the log's min statistics too
DAY0, DAY1 = START, START + timedelta(days=1)
ALL = (F.FEEDBACK, F.DEAD, F.PREDICTIONS, F.SILVER, F.EXAMPLES, F.PAIRS, F.INDEX)
NOW = datetime(2026, 2, 1, 12, tzinfo=timezone.utc)


def _curate(s: Settings, day) -> None:
    for stage in STAGES:
        curate(stage, s, day, cfg=CurationConfig(), key=KEY)


def _predictions(uri: str) -> None:
    at = datetime(2026, 1, 5, 9, tzinfo=timezone.utc)
    rows = [(f"req-{n}", resp, conv, "t5-large", "1", "champion", 0.5, 3.0, "a prompt", "an answer", int(at.timestamp() * 1e6))
            for n, (resp, conv) in enumerate([("resp-0000-1", "conv-0000"), ("resp-0000-2", "conv-0000"), ("resp-0001-1", "conv-0001"),
                                              ("resp-0003-1", "conv-0003")])]
    write_deltalake(uri, B.rows_table(B.PREDICTIONS_SCHEMA, B.PREDICTION_ROW_COLUMNS, "served_at", rows, [json.dumps({"r": r[0]}) for r in rows],
                                      topic="predictions", partitions=[0] * 4, offsets=list(range(4)), timestamps_ms=[None] * 4,
                                      ingested_at=at), partition_by=["event_date"])


DEAD_LETTERS = [
    (json.dumps({"event_id": "x1", "user_id": USER, "event_type": "thumbs", "value": 7}).encode(), True),  # parses: the user's
    (b'{"event_id": "x2", "user_id": "' + USER.encode() + b'", "prompt": "cut sho', True),  # cut short, shows its user_id
    (json.dumps({"event_id": "x3", "user_id": "user-01", "value": 7}).encode(), False),  # another user's
    (json.dumps({"request_id": "r9", "response_id": "resp-0000-1", "score": 3}).encode(), True),  # a prediction of the user's
    (b"\xff\xfe not json at all", False),  # cannot be read: counted, not examined
]


def _dead_letters(uri: str) -> None:
    at = datetime(2026, 1, 5, 9, tzinfo=timezone.utc)
    n = len(DEAD_LETTERS)
    write_deltalake(uri, B.dead_letters_table([r for r, _ in DEAD_LETTERS], ["validate"] * n, ["bad value"] * n, topic="feedback.events",
                                              partitions=[1] * n, offsets=list(range(100, 100 + n)), timestamps_ms=[None] * n, ingested_at=at))


def _lake(s: Settings, qa: Path) -> dict[str, int]:
    """Day 1 (no USER) curated -> gold v0; the first half of day 0 (USER's question among it) -> v1; the rest of day 0
    arrives late and its partition is re-curated -> v2 (v1's files leave the table, stay on disk). Returns v1."""
    events = qa_events(qa, n_questions=12, days=2)
    day0, day1 = [e for e in events if e["event_date"] == DAY0], [e for e in events if e["event_date"] == DAY1]
    bronze = table_uri(s, F.FEEDBACK)
    write_bronze(bronze, day1)
    _curate(s, DAY1)
    write_bronze(bronze, day0[: len(day0) // 2], first_offset=1000)
    _curate(s, DAY0)
    v1 = {t: lake.version(table_uri(s, t)) or 0 for t in (F.EXAMPLES, F.PAIRS)}
    write_bronze(bronze, day0[len(day0) // 2:], first_offset=2000)
    _curate(s, DAY0)
    _predictions(table_uri(s, F.PREDICTIONS))
    _dead_letters(table_uri(s, F.DEAD))
    for t in (F.FEEDBACK, F.EXAMPLES):  # checkpoints list the user's files with their statistics too
        DeltaTable(table_uri(s, t)).create_checkpoint()
    return v1


def _mine(s: Settings, table: str, df: pl.DataFrame | None) -> int:
    """Rows of USER in a table's current version, judged independently of features.erasure."""
    if df is None:
        return 0
    p = pseudonymize(USER, KEY)
    if table == F.FEEDBACK:
        return df.filter(pl.col("user_id") == USER).height
    if table == F.DEAD:
        return sum(USER.encode() in r or b"resp-0000-" in r for r in df["raw"].to_list())
    if table == F.PREDICTIONS:
        return df.filter(pl.col("conversation_id") == "conv-0000").height
    if table in (F.SILVER, F.EXAMPLES, F.PAIRS):
        return df.filter(pl.col("user_id") == p).height
    return 0


def _other_ids(s: Settings) -> dict[str, set]:
    p = pseudonym = pseudonymize(USER, KEY)
    out = {}
    for t, col in ((F.FEEDBACK, "event_id"), (F.SILVER, "event_id"), (F.EXAMPLES, "example_id"), (F.PAIRS, "pair_id")):
        df = lake.read(table_uri(s, t))
        assert df is not None
        other = df.filter(pl.col("user_id") != (USER if t == F.FEEDBACK else p))
        out[t] = set(other[col].to_list())
    assert pseudonym
    return out


def _bytes_holding(root: str, needle: bytes) -> list[str]:
    return sorted(str(p) for p in Path(root).rglob("*") if p.is_file() and needle in p.read_bytes())


@pytest.fixture()
def gov(mlflow_server: Settings, tmp_path: Path) -> Settings:
    return load_settings(**{**mlflow_server.model_dump(), "home": tmp_path / "home", "lake_root": str(tmp_path / "lake"),
                            "registered_model_name": f"erase-{uuid.uuid4().hex[:8]}"})


@pytest.mark.integration
@pytest.mark.slow
def test_forget_erases_a_user_everywhere_tags_models_and_vacuums_after_the_grace(gov: Settings, qa_feedback_path: Path) -> None:
    from trainers.lineage_guard import ERASED_TAG, ERASURES_TAG
    from trainers.lineage_report import format_model, format_table, model_lineage, table_lineage
    from trainers.tracking import client

    s = gov
    v1 = _lake(s, qa_feedback_path)
    p = pseudonymize(USER, KEY)
    before = {t: _mine(s, t, lake.read(table_uri(s, t))) for t in ALL}
    assert all(before[t] > 0 for t in (F.FEEDBACK, F.DEAD, F.PREDICTIONS, F.SILVER, F.EXAMPLES, F.PAIRS)), before
    assert _bytes_holding(s.lake + "/bronze", USER.encode())  # in the data files and in the log's statistics
    others = _other_ids(s)
    user_docs = F.current(s, F.Footprint(USER, p or ""))  # the user's rows now (a footprint of its own, not forget's)
    index_before = set(lake.read(table_uri(s, F.INDEX))["doc_id"].to_list())  # type: ignore[index]

    # three registered versions: one pinned v1 (held USER), one pinned the gold versions before day 0, one another lake
    c = client(s)
    name = s.registered_model_name
    c.create_registered_model(name)
    pins = lambda ex, pa, root=s.lake: {  # noqa: E731
        "lakeloop.train_examples.uri": f"{root}/{F.EXAMPLES}", "lakeloop.train_examples.version": str(ex),
        "lakeloop.preference_pairs.uri": f"{root}/{F.PAIRS}", "lakeloop.preference_pairs.version": str(pa)}
    held = c.create_model_version(name, source="s3://lakeloop-tests/held", tags=pins(v1[F.EXAMPLES], v1[F.PAIRS]))
    clean = c.create_model_version(name, source="s3://lakeloop-tests/clean", tags=pins(0, 0))
    elsewhere = c.create_model_version(name, source="s3://lakeloop-tests/elsewhere", tags=pins(v1[F.EXAMPLES], v1[F.PAIRS], "/nowhere/lake"))

    said: list[str] = []
    rec = forget(s, USER, key=KEY, now=NOW, say=said.append)

    # every table: zero rows of the user in its latest version; everyone else's rows intact
    for t in ALL:
        assert _mine(s, t, lake.read(table_uri(s, t))) == 0, t
    assert _other_ids(s) == others
    index = set(lake.read(table_uri(s, F.INDEX))["doc_id"].to_list())  # type: ignore[index]
    mine = set(user_docs[F.EXAMPLES]["example_id"].to_list()) | set(user_docs[F.PAIRS]["pair_id"].to_list())
    assert mine and not (mine & index) and index_before - index >= mine  # the user's texts left the MinHash index
    assert len(index_before - index) == len(mine) + 1  # ... and their one prompt, which no other user asked
    dead = lake.read(table_uri(s, F.DEAD))
    assert dead is not None and sorted(dead["kafka_offset"].to_list()) == [102, 104]  # another user's, and the unreadable one
    assert rec.rows_removed[F.DEAD] == 3 and rec.unparsed_dead_letters == 1 and rec.rows_removed[F.PREDICTIONS] == 2
    assert rec.rows_removed[F.FEEDBACK] == before[F.FEEDBACK] and rec.rows_removed[F.EXAMPLES] == before[F.EXAMPLES]

    # the record: when, the pseudonym, rows per table, models; never the raw id
    [stored] = records(s)
    assert stored.erasure_id == rec.erasure_id and stored.pseudonym == p and stored.erased_at == NOW
    assert stored.rows_removed == rec.rows_removed and stored.vacuum_due == NOW + timedelta(hours=168) and stored.vacuumed_at is None
    assert stored.models == [f"{name} v{held.version}"] and not stored.unreadable_pins
    assert not _bytes_holding(table_uri(s, "governance/erasures"), USER.encode())
    assert USER not in json.dumps(rec.to_dict()) and not any(USER in m for m in said)

    # the model version whose pinned versions held the user is tagged, the others are not; lineage says so
    tags = {v.version: dict(c.get_model_version(name, v.version).tags) for v in (held, clean, elsewhere)}
    assert tags[held.version][ERASED_TAG] == "true" and tags[held.version][ERASURES_TAG] == rec.erasure_id
    assert ERASED_TAG not in tags[clean.version] and ERASED_TAG not in tags[elsewhere.version]
    assert "contains erased data" in format_model(model_lineage(s, held.version, model_name=name))
    assert "contains erased data" not in format_model(model_lineage(s, clean.version, model_name=name))
    assert model_lineage(s, held.version, model_name=name).to_dict()["contains_erased_data"] is True
    shown = format_table(table_lineage(s, F.EXAMPLES)).splitlines()
    assert [ln for ln in shown if f"{name} v{held.version} " in ln and "contains erased data" in ln]

    # gold erasure commits carry the erasure id and the content hash of what they left
    for t in (F.EXAMPLES, F.PAIRS):
        uri = table_uri(s, t)
        [v] = erasure_versions(uri)
        entry = DeltaTable(uri).history(1)[0]
        from features.manifest import content_hash
        assert L.recorded_hash(entry, v) == content_hash(lake.read(uri))  # type: ignore[arg-type]
        # training pins the erasure's version (it inherits the checks of the one before), never one before it
        checked = [CheckEval(x, None, "min_rows", True, x) for x in range(v)]
        assert checked_version(checked, latest=v, erasures=[v]).version == v
        assert checked_version(checked, latest=v).version == v - 1  # what it would pin without knowing of the erasure

    # within the grace the pinned versions still read (with the user); nothing is vacuumed before it is due
    assert L.unreadable(table_uri(s, F.EXAMPLES), v1[F.EXAMPLES]) is None
    assert vacuum_due(s, now=NOW + timedelta(hours=167)) == []
    files = {t: set(data_files(table_uri(s, t))) for t in ALL}
    assert all(set(rec.files.get(t, [])) <= files[t] for t in ALL)
    assert len(rec.files[F.EXAMPLES]) >= 2  # the current day-0 file and the one only v1 holds

    # re-curating every day brings none of it back (bronze lost the rows too)
    _curate(s, DAY0)
    _curate(s, DAY1)
    for t in ALL:
        assert _mine(s, t, lake.read(table_uri(s, t))) == 0, t
    assert _other_ids(s)[F.EXAMPLES] >= others[F.EXAMPLES] and _other_ids(s)[F.PAIRS] >= others[F.PAIRS]

    # after the grace: every file that held the user is gone, pinned versions included; not a byte of the raw id is left
    [done] = vacuum_due(s, now=NOW + timedelta(hours=169))
    assert done.files_vacuumed == sum(len(v) for v in rec.files.values()) and records(s)[0].vacuumed_at is not None
    for t in ALL:
        assert not set(rec.files.get(t, [])) & set(data_files(table_uri(s, t))), t
    assert _bytes_holding(s.lake, USER.encode()) == []  # parquet files, commits and checkpoints alike
    assert L.unreadable(table_uri(s, F.EXAMPLES), v1[F.EXAMPLES]) is not None  # erasure won over the pin
    [opt] = optimize_tables(s, [F.EXAMPLES], say=lambda m: None)  # and lake optimize says the pinned version is gone
    assert v1[F.EXAMPLES] in opt.lost and not opt.vacuum_skipped
    assert "contains erased data" in format_model(model_lineage(s, held.version, model_name=name))
    for t in ALL:  # the latest versions read
        if lake.exists(table_uri(s, t)):
            DeltaTable(table_uri(s, t)).to_pyarrow_table()
    assert vacuum_due(s, now=NOW + timedelta(hours=500)) == []  # once


@pytest.mark.integration
def test_cli_forget_vacuum_now_json(gov: Settings, qa_feedback_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestration.cli import app
    from orchestration.commands import common

    s = gov
    write_bronze(table_uri(s, F.FEEDBACK), [e for e in qa_events(qa_feedback_path, n_questions=6, days=1)])
    _curate(s, DAY0)
    for k, v in s.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("LAKELOOP_PSEUDONYM_KEY", KEY.decode())
    common.settings.cache_clear()
    try:
        out = CliRunner().invoke(app, ["forget", "--user-id", "-", "--vacuum-now", "--json"], input=USER + "\n")
        again = CliRunner().invoke(app, ["forget", "--user-id", USER], terminal_width=300)
        due = CliRunner().invoke(app, ["forget", "--vacuum-due"])
    finally:
        common.settings.cache_clear()
    assert out.exit_code == 0, out.output
    rec = json.loads(out.output)
    assert USER not in out.output and rec["pseudonym"] == pseudonymize(USER, KEY)
    assert rec["rows_removed"][F.FEEDBACK] > 0 and rec["vacuumed_at"] is not None and rec["files_vacuumed"] > 0
    assert _bytes_holding(s.lake, USER.encode()) == []
    assert again.exit_code == 0 and "rows removed: none" in again.output and USER not in again.output
    assert due.exit_code == 0 and "no erasure is due" in due.output
    assert len(records(s)) == 2


def test_wrong_key_or_silent_mlflow_deletes_nothing(settings: Settings, qa_feedback_path: Path) -> None:
    write_bronze(table_uri(settings, F.FEEDBACK), qa_events(qa_feedback_path, n_questions=4, days=1))
    _curate(settings, DAY0)
    versions = {t: lake.version(table_uri(settings, t)) for t in ALL}
    with pytest.raises(KeyMismatchError, match="nothing was deleted"):
        forget(settings, USER, key=b"another-key-0123456789abcdef", models=lambda s: [])
    silent = load_settings(**{**settings.model_dump(), "mlflow_tracking_uri": f"http://127.0.0.1:{free_port()}"})
    with pytest.raises(ServiceError, match="nothing was deleted"):
        forget(silent, USER, key=KEY)
    assert {t: lake.version(table_uri(settings, t)) for t in ALL} == versions
    assert records(settings) == []


def test_delete_predicates_never_name_the_raw_user_id() -> None:
    fp = F.Footprint("alice@example.com", "u_0123")
    rows = pl.DataFrame({"kafka_topic": ["t", "t", "t"], "kafka_partition": [0, 0, 2], "kafka_offset": [5, 3, 9]})
    pred = predicate(F.FEEDBACK, rows, fp)
    assert pred == "(kafka_topic = 't' AND kafka_partition = 0 AND kafka_offset IN (3, 5)) OR (kafka_topic = 't' AND kafka_partition = 2 AND kafka_offset IN (9))"
    assert predicate(F.SILVER, rows, fp) == "user_id = 'u_0123'"
    assert predicate(F.EXAMPLES, pl.DataFrame({"example_id": ["ex_b", "ex_a'"]}), fp) == "example_id IN ('ex_a''', 'ex_b')"


def test_dead_letters_of_the_user_are_found_whatever_they_hold() -> None:
    fp = F.Footprint("zoë", "u_1")
    raws = [
        json.dumps({"user_id": "zoë", "response_id": "r1", "event_type": "thumbs"}, ensure_ascii=False).encode(),  # as sent
        json.dumps({"user_id": "zoë", "response_id": ["not", "an", "id"], "conversation_id": 7}).encode(),  # \u-escaped, odd types
        b'{"event_id": "e", "user_id" : "zo\xc3\xab", "value": ',  # cut short, still shows the user (UTF-8)
        json.dumps({"response_id": "r1", "score": 2.0}).encode(),  # a prediction of the user's response
        json.dumps({"user_id": "zoe", "response_id": {"r": 1}}).encode(),  # another user, an unhashable id
        b'{"user_id": "zo', b"", b"\x00\x01",  # cannot tell: counted
    ]
    hit = fp.match(F.DEAD, pl.DataFrame({"raw": raws}, schema={"raw": pl.Binary}))
    assert hit.to_list() == [True, True, True, True, False, False, False, False]
    assert fp._unparsed == 3 and fp.responses == {"r1"} and fp.pointwise == {"r1"} and fp.conversations == set()


@pytest.mark.parametrize(("evals", "latest", "erasures", "pinned"), [
    ([(0, True), (1, True)], 2, [2], 2),  # an erasure after a checked version is pinnable
    ([(0, True), (1, True)], 3, [2], 2),  # v3 (curation after the erasure) not checked yet: the erasure's version
    ([(0, True)], 2, [2], None),  # v1 never checked: the erasure inherits nothing, and v0 holds the erased rows
    ([(0, True), (1, True), (3, True)], 3, [2], 3),
    ([(0, True), (1, False)], 2, [2], None),  # inherits a failure
    ([(0, True)], 3, [2, 3], None),  # v1 never checked: the erasures inherit nothing
    ([(0, True), (1, True)], 3, [2, 3], 3),  # erasures in a row chain
    ([(0, True), (1, True)], 1, [], 1),
])
def test_no_training_pins_a_version_older_than_an_erasure(evals, latest, erasures, pinned) -> None:
    pin = checked_version([CheckEval(v, None, "min_rows", ok, v) for v, ok in evals], latest=latest, erasures=erasures)
    assert pin.version == pinned, pin.reason
    if pinned is None and erasures:
        assert "no pinnable version" in pin.reason
