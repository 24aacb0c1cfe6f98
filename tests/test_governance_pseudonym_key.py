"""Issue 17: the pseudonym key is created atomically with mode 0600, its fingerprint is stored in the lake, and a
run with another key refuses to start (before, a changed key silently changed every pseudonym)."""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor
from datetime import date

import pytest
from deltalake import DeltaTable
from typer.testing import CliRunner

from features import pseudonymize as P
from features.config import CurationConfig
from features.engine import curate
from infra.errors import ConfigError
from infra.tables import table_uri
from tests.curation_fixtures import START, qa_events, write_bronze

KEY_A, KEY_B = b"a" * 32, b"b" * 32


def test_the_key_file_is_created_once_with_mode_0600_even_when_first_uses_race(tmp_path) -> None:
    path = tmp_path / "secrets" / "pseudonym.key"
    with ThreadPoolExecutor(8) as pool:
        keys = list(pool.map(lambda _: P.load_or_create_key(path), range(32)))
    assert len(set(keys)) == 1 and len(keys[0]) == 64  # one key for every racer: 32 random bytes, hex
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert os.listdir(path.parent) == ["pseudonym.key"]  # no temp file left behind
    assert P.load_or_create_key(path) == keys[0]


def test_a_key_file_others_can_read_or_a_truncated_one_is_refused(tmp_path) -> None:
    path = tmp_path / "pseudonym.key"
    P.load_or_create_key(path)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="can be read by other users") as err:
        P.load_or_create_key(path)
    assert err.value.hint == f"chmod 600 {path}"
    path.chmod(0o600)
    path.write_text("short")
    with pytest.raises(ConfigError, match="fewer than 16"):
        P.load_or_create_key(path)


def test_the_fingerprint_names_the_key_without_revealing_it() -> None:
    fp = P.fingerprint(KEY_A)
    assert fp == P.fingerprint(KEY_A) != P.fingerprint(KEY_B) and fp.startswith("scrypt1:")
    assert KEY_A.decode() not in fp and P.pseudonymize("user-1", KEY_A)[2:] not in fp


def _silver_version(settings) -> int:
    return DeltaTable(table_uri(settings, "silver/feedback")).version()


def test_a_run_with_another_key_refuses_to_start(settings, qa_feedback_path) -> None:
    write_bronze(table_uri(settings, "bronze/feedback_events"), qa_events(qa_feedback_path, n_questions=8, days=2))
    cfg, day2 = CurationConfig(), date.fromordinal(START.toordinal() + 1)
    curate("silver", settings, START, cfg=cfg, key=KEY_A)
    silver = table_uri(settings, "silver/feedback")
    props = DeltaTable(silver).metadata().configuration
    assert props[P.FINGERPRINT_PROPERTY] == P.fingerprint(KEY_A)  # the first run recorded its key in the lake
    before = _silver_version(settings)
    with pytest.raises(P.KeyMismatchError) as err:
        curate("silver", settings, day2, cfg=cfg, key=KEY_B)
    msg = str(err.value)
    assert P.fingerprint(KEY_B) in msg and P.fingerprint(KEY_A) in msg and "stopped before writing anything" in msg
    assert "LAKELOOP_PSEUDONYM_KEY" in err.value.hint and "re-curate" in err.value.hint
    assert _silver_version(settings) == before  # nothing written
    rep = curate("silver", settings, day2, cfg=cfg, key=KEY_A)  # the right key goes on
    assert rep.rows_out > 0 and _silver_version(settings) > before


def test_a_lake_curated_before_fingerprints_records_the_key_of_its_next_run(settings, qa_feedback_path) -> None:
    from features import pipeline_local

    write_bronze(table_uri(settings, "bronze/feedback_events"), qa_events(qa_feedback_path, n_questions=8, days=1))
    pipeline_local.curate_silver(settings, START, cfg=CurationConfig(), key=KEY_A)  # as an older lakeloop did
    assert P.FINGERPRINT_PROPERTY not in DeltaTable(table_uri(settings, "silver/feedback")).metadata().configuration
    assert P.check_lake_key(table_uri(settings, "silver/feedback"), KEY_A) == "recorded"
    assert P.check_lake_key(table_uri(settings, "silver/feedback"), KEY_A) == "matches"
    with pytest.raises(P.KeyMismatchError):
        P.check_lake_key(table_uri(settings, "silver/feedback"), KEY_B)


def test_the_curate_command_with_a_changed_key_fails_with_the_fix(settings, monkeypatch, qa_feedback_path) -> None:
    from orchestration.cli import app
    from orchestration.commands import common

    monkeypatch.setenv("LAKELOOP_HOME", str(settings.home))
    monkeypatch.delenv("LAKELOOP_PSEUDONYM_KEY", raising=False)
    common.settings.cache_clear()
    try:
        write_bronze(table_uri(settings, "bronze/feedback_events"), qa_events(qa_feedback_path, n_questions=6, days=1))
        first = CliRunner().invoke(app, ["curate"])  # the local dev key, made on first use
        assert first.exit_code == 0, first.output
        key_file = settings.home / "secrets" / "pseudonym.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        monkeypatch.setenv("LAKELOOP_PSEUDONYM_KEY", "another-key-" + "x" * 20)
        second = CliRunner().invoke(app, ["curate"])
        assert second.exit_code != 0
        shown = second.output + str(second.exception)
        assert "not the key this lake's pseudonyms were made with" in shown and "use the original key" in shown, shown
    finally:
        common.settings.cache_clear()
