"""A registered version loads only if the promotion ledger vouches for its files (trainers.model_trust): a gate-passed
version loads, a version the ledger never registered is refused, a version whose files changed after registration is
refused, and the scoring service keeps serving what it had and alerts. MLflow on a local SQLite store (no server)."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

from infra.settings import Settings, load_settings
from monitors import model_store, serve
from trainers.model_trust import UntrustedModelError, verdict
from trainers import lexical as L
from trainers import registry as R
from trainers import tracking
from trainers.train import _log_model

EX = pd.DataFrame({"prompt": ["q1"] * 4, "response": ["good answer here", "bad", "fine answer yes", "no"], "label": [1, 0, 1, 0]})
PR = pd.DataFrame({"prompt": ["q1"], "chosen": ["good answer here"], "rejected": ["bad"], "is_tie": [False]})
REPO = Path(__file__).resolve().parent.parent
TEXTS = pd.DataFrame({"prompt": ["q1"], "response": ["good answer here"]})


@pytest.mark.parametrize(("recorded", "actual", "reason"), [
    (None, "a" * 64, "unregistered"), ("", "a" * 64, "unregistered"), ("a" * 64, "b" * 64, "digest mismatch"), ("a" * 64, "a" * 64, "ok"),
])
def test_verdict(recorded: str | None, actual: str, reason: str) -> None:
    v = verdict("m", "7", recorded=recorded, actual=actual)
    assert (v.trusted, v.reason) == (reason == "ok", reason) and "m v7" in v.message


@pytest.fixture
def local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.chdir(tmp_path)  # MLflow's SQLite store puts run artifacts under ./mlruns
    return load_settings(home=tmp_path / "home", mlflow_tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")


def _version(settings: Settings, tmp_path: Path, name: str, tags: dict[str, str]) -> str:
    model_dir = L.save(L.fit("tfidf_pairwise", EX, PR), tmp_path / name)
    tr = tracking.Tracker(settings, experiment="trust", run_name=name)
    uri = _log_model(tr, model_dir, EX)
    tr.finish()
    return R.register_version(settings, run_id=tr.run_id, model_uri=uri, tags=tags)[0]


def test_good_loads_unknown_and_tampered_are_refused(local: Settings, tmp_path: Path) -> None:
    good = _version(local, tmp_path, "good", {"lakeloop.gate": "passed"})
    reg = R.registration(local, good)
    assert reg is not None and reg.gate == "passed" and len(reg.digest) == 64
    assert model_store.version_tags(local, good)[R.DIGEST_TAG] == reg.digest
    path_before = list(sys.path)
    assert float(model_store.load_pyfunc(local, good).predict(TEXTS)["score"][0]) > 0.5
    assert sys.path == path_before, "the model's temporary code/ folder stayed on sys.path"
    assert all(Path(sys.modules[p].__file__).parent.parent == REPO for p in ("trainers", "infra", "features"))

    unknown = _version(local, tmp_path, "unknown", {"lakeloop.gate": "failed"})  # in MLflow, never vouched for
    with pytest.raises(UntrustedModelError, match=f"v{unknown} is not in the promotion ledger") as exc:
        model_store.load_pyfunc(local, unknown)
    assert exc.value.reason == "unregistered" and "retrain" in (exc.value.hint or "")
    from monitors.canary_job import registry_replay

    replay = registry_replay(local)  # the canary's paired replay loads through the same check
    assert len(replay(good, TEXTS)) == 1
    with pytest.raises(UntrustedModelError, match=f"v{unknown} is not in the promotion ledger"):
        replay(unknown, TEXTS)

    stored = [p for p in (tmp_path / "mlruns").rglob("lexical_model.json") if "good" in str(p.parent)]
    assert stored, "the logged model's files were not found under ./mlruns"
    for p in stored:  # someone with write access to the artifact store changes the weights
        p.write_text(p.read_text().replace('"bias": ', '"bias": 1000.0 + '))
    with pytest.raises(UntrustedModelError, match=f"v{good}'s files changed since it was registered") as exc:
        model_store.load_pyfunc(local, good)
    assert exc.value.reason == "digest mismatch"


def test_an_operator_override_is_recorded_and_loads(local: Settings, tmp_path: Path) -> None:
    v = _version(local, tmp_path, "override", {"lakeloop.gate": "failed", "lakeloop.override": "operator put it on canary"})
    reg = R.registration(local, v)
    assert reg is not None and reg.gate == "override"
    assert "registration" in set(R.ledger_entries(local, include_registrations=True)["alias"])
    assert R.ledger_entries(local).empty  # alias moves only, as the rollout's readers expect
    assert R.ledger_heads(local)[1] == {}  # registration entries are not alias heads
    model_store.load_pyfunc(local, v)


def test_serving_keeps_the_trusted_champion_and_alerts_on_an_untrusted_one(local: Settings, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    good = _version(local, tmp_path, "good", {"lakeloop.gate": "passed"})
    bad = _version(local, tmp_path, "bad", {})  # registered in MLflow by someone, not by lakeloop's gate
    aliases = {"champion": good}
    monkeypatch.setattr(serve.model_store, "aliases", lambda s: dict(aliases))
    monkeypatch.setattr(serve.model_store, "canary_share", lambda s: 0.0)
    alerts: list = []
    pool = serve.ModelPool(local, notify=alerts.append)
    assert pool.refresh().champion.version == good and not alerts
    aliases["champion"] = bad
    served = pool.refresh()
    assert served.champion.version == good, "the untrusted version replaced the champion"
    assert f"v{bad}" in (pool.last_error or "") and "promotion ledger" in (pool.last_error or "")
    assert len(alerts) == 1 and alerts[0].kind == "untrusted_model" and alerts[0].details["version"] == bad
    pool.refresh()  # refused versions are not downloaded again before retry_refused_s: no second alert either
    assert len(alerts) == 1 and pool.serving.champion.version == good
