"""People stay in charge: holds read from MLflow tags at both levels, and alias changes made by hand through
the MLflow client (as a person in the UI would) land in the promotion ledger once, with the canary share
kept consistent. The pure parts are tables of cases; the rest runs on the session's real MLflow server."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from infra.settings import Settings, load_settings
from monitors import model_store, overrides
from monitors.overrides import Holds, differences, hold_reason, is_held
from trainers import registry as R
from trainers.registry import LedgerHead
from trainers.tracking import client

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("value", "reason"), [
    (None, None), ("", None), ("  ", None), ("false", None), ("FALSE", None), ("0", None),
    ("waiting for legal review", "waiting for legal review"), (" true ", "true"), ("1", "1"),
])
def test_hold_tag_values(value: str | None, reason: str | None) -> None:
    assert hold_reason(value) == reason


@pytest.mark.parametrize(("holds", "versions", "held"), [
    (Holds(), ("1", "2"), None),
    (Holds(versions={"2": "bad labels"}), ("1",), None),
    (Holds(versions={"2": "bad labels"}), ("1", "2"), "version 2 is on hold: bad labels"),
    (Holds(versions={"2": "bad labels"}), (2,), "version 2 is on hold: bad labels"),
    (Holds(versions={"2": "bad labels"}), (None,), None),
    (Holds(model="freeze for the launch"), (), "the registered model is on hold: freeze for the launch"),
    (Holds(model="freeze", versions={"1": "x"}), ("1",), "the registered model is on hold: freeze"),
])
def test_is_held(holds: Holds, versions: tuple, held: str | None) -> None:
    assert is_held(holds, *versions) == held


def head(alias: str, frm: str | None, to: str | None, age_s: float = 3600) -> LedgerHead:
    return LedgerHead(alias, frm, to, NOW - timedelta(seconds=age_s), "autopilot", "set" if to else "delete")


@pytest.mark.parametrize(("mlflow", "heads", "found"), [
    ({}, {}, []),
    ({"champion": "1"}, {"champion": head("champion", None, "1")}, []),
    ({"champion": "2"}, {"champion": head("champion", None, "1")}, [("champion", "1", "2")]),  # moved by hand
    ({}, {"canary": head("canary", None, "2")}, [("canary", "2", None)]),  # removed by hand
    ({"challenger": "3"}, {}, [("challenger", None, "3")]),  # set by hand, never in the ledger
    ({"champion": "1"}, {"champion": head("champion", "1", "2", age_s=5)}, []),  # a promoter between ledger and MLflow
    ({"champion": "1"}, {"champion": head("champion", "1", "2", age_s=600)}, [("champion", "2", "1")]),  # put back by hand
    ({"canary": "2"}, {"canary": head("canary", "2", None, age_s=5)}, []),  # a rollback on its way
    ({"prod": "9", "champion": "1"}, {"champion": head("champion", None, "1")}, []),  # not lakeloop's alias
])
def test_differences(mlflow: dict, heads: dict, found: list) -> None:
    diffs = differences(mlflow, heads, now=NOW, settle_seconds=60)
    assert [(d.alias, d.ledger_value, d.mlflow_value) for d in diffs] == found


# ---- on the real MLflow server ------------------------------------------------------------------------
@pytest.fixture()
def reg(mlflow_server: Settings, tmp_path: Path) -> Settings:
    """The session's MLflow server, a private registered model with three versions, and a private lake."""
    s = load_settings(**{**mlflow_server.model_dump(), "home": tmp_path / "home", "lake_root": str(tmp_path / "lake"),
                         "registered_model_name": f"ov-{uuid.uuid4().hex[:8]}"})
    c = client(s)
    c.create_registered_model(s.registered_model_name)
    for _ in range(3):
        c.create_model_version(s.registered_model_name, source="s3://lakeloop-tests/no-model", run_id=None)
    return s


def ledger(s: Settings):  # type: ignore[no-untyped-def]
    entries = R.ledger_entries(s)
    return entries[entries.model_name == s.registered_model_name].reset_index(drop=True)


@pytest.mark.integration
def test_holds_are_read_at_both_levels(reg: Settings) -> None:
    c, name = client(reg), reg.registered_model_name
    assert not overrides.holds(reg)
    c.set_model_version_tag(name, "2", "lakeloop.hold", "labels of 2026-01-04 under review")  # as in the MLflow UI
    c.set_model_version_tag(name, "3", "lakeloop.hold", "false")  # not a hold
    h = overrides.holds(reg)
    assert h == Holds(None, {"2": "labels of 2026-01-04 under review"})
    assert is_held(h, "1") is None and "under review" in (is_held(h, "1", "2") or "")
    overrides.set_hold(reg, "launch freeze")
    h = overrides.holds(reg)
    assert h.model == "launch freeze" and is_held(h) == "the registered model is on hold: launch freeze"
    overrides.clear_hold(reg)
    overrides.clear_hold(reg, version="2")
    overrides.clear_hold(reg, version="2")  # clearing twice is fine
    assert not overrides.holds(reg)
    with pytest.raises(ValueError, match="reason"):
        overrides.set_hold(reg, "  ", version="1")


@pytest.mark.integration
def test_an_alias_moved_by_hand_is_recorded_once(reg: Settings) -> None:
    R.set_alias_cas(reg, "champion", None, 1, actor="autopilot", reason="first")
    before = datetime.now(UTC)
    client(reg).set_registered_model_alias(reg.registered_model_name, "champion", "2")  # a person, through the MLflow API
    changes = overrides.detect_external_changes(reg)
    assert [(c.alias, c.from_version, c.to_version) for c in changes] == [("champion", "1", "2")]
    change = changes[0]
    assert change.not_before is not None and change.not_before <= before <= change.detected_at
    assert "model_last_updated" in change.mlflow and "version_created" in change.mlflow
    entries = ledger(reg)
    assert entries[["actor", "action", "from_version", "to_version"]].values.tolist() == [
        ["autopilot", "set", None, "1"], ["external", "set", "1", "2"]]
    assert json.loads(entries.iloc[1]["metrics"]) == dict(change.mlflow) and "outside lakeloop" in entries.iloc[1]["reason"]
    assert R.ledger_heads(reg)[0] == change.ledger_version
    assert model_store.version_tags(reg, "2")[model_store.STATE_TAG] == "champion"
    assert model_store.version_tags(reg, "1")[model_store.STATE_TAG] == "retired"

    assert overrides.detect_external_changes(reg) == []  # idempotent
    assert len(ledger(reg)) == 2
    R.set_alias_cas(reg, "champion", "2", 3, actor="autopilot", reason="compare-and-set expects what the person set")
    assert overrides.detect_external_changes(reg) == []


@pytest.mark.integration
def test_a_canary_removed_by_hand_gets_no_traffic(reg: Settings) -> None:
    R.set_alias_cas(reg, "champion", None, 1, actor="autopilot", reason="first")
    R.set_alias_cas(reg, "canary", None, 2, actor="autopilot", reason="canary")
    model_store.set_canary_share(reg, 0.5)
    client(reg).delete_registered_model_alias(reg.registered_model_name, "canary")
    # The alias is back where it was before the ledger's last entry: within settle_seconds of that entry this
    # looks like a promoter on its way (test_a_promoter_between_ledger_and_mlflow_is_not_external); a person
    # acts later than that, so the test lets no time settle.
    changes = overrides.detect_external_changes(reg, settle_seconds=0)
    assert [(c.alias, c.from_version, c.to_version) for c in changes] == [("canary", "2", None)]
    assert "share set to 0 (was 50%)" in changes[0].summary()
    assert model_store.canary_share(reg) == 0.0
    assert model_store.version_tags(reg, "2")[model_store.STATE_TAG] == "rolled_back"
    assert ledger(reg).iloc[-1][["actor", "action", "from_version", "to_version"]].tolist() == ["external", "delete", "2", None]
    assert overrides.detect_external_changes(reg, settle_seconds=0) == []


@pytest.mark.integration
def test_champion_moved_by_hand_during_a_canary_leaves_the_canary(reg: Settings) -> None:
    R.set_alias_cas(reg, "champion", None, 1, actor="autopilot", reason="first")
    R.set_alias_cas(reg, "canary", None, 2, actor="autopilot", reason="canary")
    model_store.set_canary_share(reg, 0.1)
    client(reg).set_registered_model_alias(reg.registered_model_name, "champion", "3")
    client(reg).set_registered_model_alias(reg.registered_model_name, "challenger", "3")  # never in the ledger
    changes = overrides.detect_external_changes(reg)
    assert {(c.alias, c.from_version, c.to_version) for c in changes} == {("champion", "1", "3"), ("challenger", None, "3")}
    champion = next(c for c in changes if c.alias == "champion")
    assert "canary v2 left in flight at 10% traffic" in champion.note and champion.ledger_version == changes[1].ledger_version
    assert model_store.aliases(reg)["canary"] == "2" and model_store.canary_share(reg) == 0.1
    assert overrides.detect_external_changes(reg) == []


@pytest.mark.integration
def test_a_promoter_between_ledger_and_mlflow_is_not_external(reg: Settings) -> None:
    R.set_alias_cas(reg, "champion", None, 1, actor="autopilot", reason="first")
    R.set_alias_cas(reg, "champion", "1", 2, actor="autopilot", reason="better")
    client(reg).set_registered_model_alias(reg.registered_model_name, "champion", "1")  # as if MLflow never got the 2
    assert overrides.detect_external_changes(reg, settle_seconds=300) == []  # a promoter may still be on its way
    changes = overrides.detect_external_changes(reg, settle_seconds=0)  # long after: what MLflow shows is recorded
    assert [(c.from_version, c.to_version) for c in changes] == [("2", "1")]
    assert "never reached MLflow" in ledger(reg).iloc[-1]["reason"]


@pytest.mark.integration
def test_the_hold_and_external_commands(reg: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from orchestration.cli import app
    from orchestration.commands import common

    for k, v in {**reg.env(), "LAKELOOP_LAKE_ROOT": str(reg.lake_root)}.items():
        monkeypatch.setenv(k, v)
    common.settings.cache_clear()
    try:
        run = CliRunner().invoke
        out = run(app, ["hold", "--version", "2", "--reason", "bad labels"])
        assert out.exit_code == 0 and "version 2: on hold (bad labels)" in out.output, out.output
        assert overrides.holds(reg).versions == {"2": "bad labels"}
        assert run(app, ["hold", "--version", "2"]).exit_code != 0  # neither a reason nor --clear
        out = run(app, ["hold", "--clear", "--version", "2"])
        assert out.exit_code == 0 and "not held" in out.output and not overrides.holds(reg)
        client(reg).set_registered_model_alias(reg.registered_model_name, "challenger", "3")
        out = run(app, ["rollout", "external"])
        assert out.exit_code == 0 and "challenger set to v3 outside lakeloop" in out.output, out.output
        assert "agree" in run(app, ["rollout", "external"]).output
        assert ledger(reg)[["actor", "alias", "to_version"]].values.tolist() == [["external", "challenger", "3"]]
    finally:
        common.settings.cache_clear()
