"""The alias protocol against the real MLflow server: compare-and-set, the ledger, and a race of ten
promoters on one alias (exactly one wins, exactly one ledger entry)."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from infra.settings import Settings, load_settings
from trainers import registry as R
from trainers.tracking import client

pytestmark = pytest.mark.integration


@pytest.fixture()
def reg(mlflow_server: Settings, tmp_path: Path) -> Settings:
    """The session's MLflow server, a private registered model, and a private lake (for the ledger)."""
    s = load_settings(**{**mlflow_server.model_dump(), "home": tmp_path / "home", "lake_root": str(tmp_path / "lake"),
                         "registered_model_name": f"t5-{uuid.uuid4().hex[:8]}"})
    c = client(s)
    c.create_registered_model(s.registered_model_name)
    for _ in range(3):
        c.create_model_version(s.registered_model_name, source="s3://lakeloop-tests/no-model", run_id=None)
    return s


def test_cas_moves_aliases_and_records_the_ledger(reg: Settings) -> None:
    assert R.get_alias_version(reg, "champion") is None
    change = R.set_alias_cas(reg, "champion", None, 1, actor="test", reason="first", metrics={"auc": 0.7})
    assert (change.from_version, change.to_version) == (None, "1") and R.get_alias_version(reg, "champion") == "1"
    with pytest.raises(R.AliasConflictError, match="not the expected"):
        R.set_alias_cas(reg, "champion", None, 2, actor="test", reason="stale expectation")
    R.set_alias_cas(reg, "champion", "1", 2, actor="test", reason="better")
    R.delete_alias_cas(reg, "champion", 2, actor="test", reason="rollback")
    assert R.get_alias_version(reg, "champion") is None
    ledger = R.ledger_entries(reg)
    ledger = ledger[ledger.model_name == reg.registered_model_name]
    assert ledger[["action", "from_version", "to_version"]].values.tolist() == [["set", None, "1"], ["set", "1", "2"], ["delete", "2", None]]
    assert ledger.iloc[0]["actor"] == "test" and '"auc": 0.7' in ledger.iloc[0]["metrics"]
    with pytest.raises(ValueError, match="unknown alias"):
        R.set_alias_cas(reg, "prod", None, 1, actor="t", reason="r")


def race_ten_promoters(s: Settings) -> list[str]:
    """Ten threads move 'challenger' from version 1 at once (to 2 or 3): each outcome 'won:<i>' or 'lost'."""
    R.set_alias_cas(s, "challenger", None, 1, actor="setup", reason="start")
    start = threading.Barrier(10)

    def promote(i: int) -> str:
        start.wait()
        try:
            R.set_alias_cas(s, "challenger", "1", 2 + i % 2, actor=f"promoter-{i}", reason="race")
            return f"won:{i}"
        except R.AliasConflictError:
            return "lost"

    with ThreadPoolExecutor(10) as pool:
        return list(pool.map(promote, range(10)))


def test_ten_promoters_racing_on_one_alias_exactly_one_wins(reg: Settings) -> None:
    outcomes = race_ten_promoters(reg)
    winners = [o for o in outcomes if o.startswith("won")]
    assert len(winners) == 1, outcomes
    winner = int(winners[0].split(":")[1])
    ledger = R.ledger_entries(reg)
    races = ledger[(ledger.model_name == reg.registered_model_name) & (ledger.reason == "race")]
    assert len(races) == 1 and races.iloc[0]["actor"] == f"promoter-{winner}"
    assert R.get_alias_version(reg, "challenger") == str(2 + winner % 2) == races.iloc[0]["to_version"]


def test_reconcile_restores_the_ledger_value_after_an_out_of_band_write(reg: Settings) -> None:
    R.set_alias_cas(reg, "canary", None, 1, actor="t", reason="canary")
    client(reg).set_registered_model_alias(reg.registered_model_name, "canary", "3")  # someone bypassed the protocol
    with pytest.raises(R.AliasConflictError):
        R.set_alias_cas(reg, "canary", "3", 2, actor="t", reason="believes MLflow")  # the ledger says 1
    assert R.reconcile_alias(reg, "canary") == "1" and R.get_alias_version(reg, "canary") == "1"
