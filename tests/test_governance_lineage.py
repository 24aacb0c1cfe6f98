"""Issue 17: lineage that cannot rot. A gold version a registered, non-archived model pins stays readable through
`lakeloop lake optimize` (compaction, checkpoint, vacuum at the shortest retention the code allows) and delta-rs's
log cleanup, even when every file and log entry is old enough to go; the version an archived model pinned goes.

Time is the one thing faked: ``_age`` moves a table's log timestamps and file times 60 days back, as if the
table had been written then. Everything else is real: curation, a training run and registration on the real
MLflow server, delta-rs maintenance."""

from __future__ import annotations

import glob
import json
import os
import re
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from deltalake import DeltaTable, write_deltalake
from typer.testing import CliRunner

from features import lineage as L
from features import pipeline_local as local
from features.config import CurationConfig
from feedback.maintenance import MIN_RETENTION_HOURS, optimize_tables
from infra.errors import ConfigError
from infra.ports import free_port
from infra.settings import Settings, load_settings
from infra.tables import table_uri
from tests.curation_fixtures import START, qa_events, write_bronze
from trainers import data as D

KEY = b"governance-key-0123456789abcdef"
DAYS = [START + timedelta(days=n) for n in range(3)]
GOLD = (D.EXAMPLES, D.PAIRS)


def _age(uri: str, days: int) -> None:
    """Make a table look written ``days`` ago: commit and deletion timestamps in its log, and file times."""
    shift_ms, old = days * 86_400_000, time.time() - days * 86_400
    for path in sorted(glob.glob(f"{uri}/_delta_log/*.json")):
        actions = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        for a in actions:
            if "commitInfo" in a and "timestamp" in a["commitInfo"]:
                a["commitInfo"]["timestamp"] -= shift_ms
            if "remove" in a and a["remove"].get("deletionTimestamp"):
                a["remove"]["deletionTimestamp"] -= shift_ms
            if "add" in a:
                a["add"]["modificationTime"] -= shift_ms
        Path(path).write_text("".join(json.dumps(a) + "\n" for a in actions))
    for path in glob.glob(f"{uri}/**", recursive=True):
        os.utime(path, (old, old))


def _curate(s: Settings, day) -> None:
    cfg = CurationConfig()
    local.curate_silver(s, day, cfg=cfg, key=KEY)
    local.curate_examples(s, day, cfg=cfg)
    local.curate_pairs(s, day, cfg=cfg)


def _versions(s: Settings) -> dict[str, int]:
    return {name: DeltaTable(table_uri(s, name)).version() for name in GOLD}


@pytest.fixture()
def gov(mlflow_server: Settings, tmp_path: Path) -> Settings:
    """The session's MLflow server, a private registered model and a private lake."""
    return load_settings(**{**mlflow_server.model_dump(), "home": tmp_path / "home", "lake_root": str(tmp_path / "lake"),
                            "registered_model_name": f"gov-{uuid.uuid4().hex[:8]}"})


@pytest.mark.integration
@pytest.mark.slow
def test_a_pinned_gold_version_survives_optimize_vacuum_and_log_cleanup(gov: Settings, qa_feedback_path, monkeypatch) -> None:
    from trainers import registry as R
    from trainers.candidate import candidate_from_run
    from trainers.config import TrainConfig
    from trainers.tracking import client
    from trainers.train import train

    s, bronze = gov, table_uri(gov, "bronze/feedback_events")
    events = qa_events(qa_feedback_path, n_questions=36, days=3)
    by_day = {d: [e for e in events if e["event_date"] == d] for d in DAYS}
    halves = {d: (ev[: len(ev) // 2], ev[len(ev) // 2:]) for d, ev in by_day.items()}
    offset = 0

    def add(batch: list[dict]) -> None:
        nonlocal offset
        write_bronze(bronze, batch, first_offset=offset)
        offset += len(batch)

    # day 1, half its feedback: the version an archived model pinned
    add(halves[DAYS[0]][0])
    _curate(s, DAYS[0])
    archived = _versions(s)
    add(halves[DAYS[0]][1])  # late feedback: day 1's partition is replaced (its old files leave the table)
    _curate(s, DAYS[0])
    add(halves[DAYS[1]][0])
    _curate(s, DAYS[1])

    # a real training run pins the latest gold versions; its model is registered (what a passed gate does)
    cfg = TrainConfig(candidates=("length_support",), validation_share=0.0, experiment=f"gov-{s.registered_model_name}",
                      output_dir=str(s.home / "run"), num_threads=1)
    result = train(cfg, s, say=lambda m: None)
    cand = candidate_from_run(s, result.run_id)
    pinned = {D.EXAMPLES: int(cand.lineage["lakeloop.train_examples.version"]), D.PAIRS: int(cand.lineage["lakeloop.preference_pairs.version"])}
    assert pinned == _versions(s) and pinned != archived
    version, created = R.register_version(s, run_id=result.run_id, model_uri=cand.model_uri, tags=cand.lineage)
    assert created
    c = client(s)
    old = c.create_model_version(s.registered_model_name, source="s3://lakeloop-tests/no-model", run_id=None, tags={
        "lakeloop.train_examples.uri": table_uri(s, D.EXAMPLES), "lakeloop.train_examples.version": str(archived[D.EXAMPLES]),
        "lakeloop.preference_pairs.uri": table_uri(s, D.PAIRS), "lakeloop.preference_pairs.version": str(archived[D.PAIRS])})
    c.transition_model_version_stage(s.registered_model_name, old.version, "Archived")

    # the lake moves on: day 2's partition is replaced, day 3 arrives; then two months pass
    add(halves[DAYS[1]][1])
    _curate(s, DAYS[1])
    add(by_day[DAYS[2]])
    _curate(s, DAYS[2])
    for name in GOLD:
        _age(table_uri(s, name), 60)

    # `lakeloop lake optimize` on the gold tables at the shortest retention the code allows, then delta-rs log cleanup
    from orchestration.cli import app
    from orchestration.commands import common

    for k, v in s.env().items():
        monkeypatch.setenv(k, v)
    common.settings.cache_clear()
    try:
        with pytest.raises(ConfigError, match="below the safe minimum"):
            optimize_tables(s, GOLD, retention_hours=MIN_RETENTION_HOURS - 1)
        out = CliRunner().invoke(app, ["lake", "optimize", "--table", D.EXAMPLES, "--table", D.PAIRS,
                                       "--retention-hours", str(MIN_RETENTION_HOURS)], terminal_width=400)
    finally:
        common.settings.cache_clear()
    assert out.exit_code == 0, out.output
    said = " ".join(out.output.split())
    for name in GOLD:
        kept = re.search(rf"{name}: .*?protected v{pinned[name]} \({s.registered_model_name} v{version}\): kept (\d+) files", said)
        assert kept and int(kept.group(1)) > 0, said  # files the vacuum would have deleted without the pin
        dt = DeltaTable(table_uri(s, name))
        dt.create_checkpoint()
        dt.cleanup_metadata()  # delta-rs's log cleanup (also run by its post-commit hook at checkpoints)
        assert L.keeps_history(dt)

    # version N reads back with the digest the training run recorded; the archived model's version is gone
    tags = c.get_run(result.run_id).data.tags
    for name, id_col, tag in ((D.EXAMPLES, "example_id", "train_examples"), (D.PAIRS, "pair_id", "preference_pairs")):
        snap = D.read_gold(table_uri(s, name), name, version=pinned[name])
        seen = snap.split("train").sort_values(id_col)
        assert D.rows_digest(seen, id_col) == tags[f"lakeloop.{tag}.rows_digest"], name
        assert snap.curation_hash and snap.curation_hash == tags[f"lakeloop.{tag}.curation_hash"], name
        assert L.unreadable(table_uri(s, name), archived[name]) is not None, f"{name}: the archived pin should not have been kept"
    assert "vacuumed 0 files" not in said  # the vacuum did delete: what the protection kept was really at stake


def _old_gold(s: Settings) -> str:
    """A gold table written the way tests/training_fixtures.py writes one (not by curation, so without
    KEEP_HISTORY), whose version 0 lost a file to a later overwrite, aged 60 days."""
    import pyarrow as pa

    uri = table_uri(s, D.EXAMPLES)
    rows = lambda tag: pa.table({"example_id": [f"{tag}-{i}" for i in range(4)], "prompt": ["p"] * 4, "response": ["r"] * 4,
                                 "label": [1.0] * 4, "split": ["train"] * 4})
    write_deltalake(uri, rows("a"), mode="error")
    write_deltalake(uri, rows("b"), mode="overwrite")
    _age(uri, 60)
    return uri


def test_when_mlflow_does_not_answer_gold_is_not_vacuumed(settings: Settings) -> None:
    s = load_settings(**{**settings.model_dump(), "mlflow_tracking_uri": f"http://127.0.0.1:{free_port()}"})  # nothing listens
    uri = _old_gold(s)
    said: list[str] = []
    [res] = optimize_tables(s, [D.EXAMPLES], say=said.append)
    assert res.vacuumed == 0 and "does not answer" in res.vacuum_skipped
    assert "vacuum SKIPPED" in said[-1] and L.unreadable(uri, 0) is None  # version 0 still reads
    assert L.keeps_history(DeltaTable(uri)) and "now keeps its log" in said[0]  # a table made before KEEP_HISTORY gets it
    DeltaTable(uri).cleanup_metadata()
    assert L.unreadable(uri, 0) is None  # and the log cleanup leaves its history alone


def test_without_pins_the_old_version_goes_and_keep_history_is_what_saves_the_log(settings: Settings) -> None:
    """The hazards are real: an unpinned aged version is vacuumed, and delta-rs's log cleanup drops the aged log of a
    table without KEEP_HISTORY (so the tests above would catch a guard that does nothing)."""
    uri = _old_gold(settings)
    [res] = optimize_tables(settings, [D.EXAMPLES], say=lambda m: None, pins=lambda s: [])
    assert res.vacuumed == 1 and res.protected == {} and L.unreadable(uri, 0) is not None
    plain = table_uri(settings, D.PAIRS)
    write_deltalake(plain, DeltaTable(uri).to_pyarrow_table(), mode="error")
    write_deltalake(plain, DeltaTable(uri).to_pyarrow_table(), mode="append")
    _age(plain, 60)
    dt = DeltaTable(plain)
    dt.create_checkpoint()
    dt.cleanup_metadata()
    assert L.unreadable(plain, 0) is not None
