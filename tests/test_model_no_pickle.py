"""No pickles on the model path (issue 18): the reward model is logged as MLflow models-from-code with its weights as
plain files, loads from the registry in a fresh process where lakeloop's repository cannot be imported (the model
carries its code), and a registered version loads only when the promotion ledger vouches for its files.

MLflow on a local SQLite store under tmp_path (no server): a few seconds per model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from infra.settings import Settings, load_settings
from trainers import lexical as L
from trainers import registry as R
from trainers import tracking
from trainers.train import _log_model

REPO = Path(__file__).resolve().parent.parent
EX = pd.DataFrame({"prompt": ["q1"] * 4 + ["q2"] * 4,
                   "response": ["good answer here", "bad", "fine answer yes", "no", "good reply", "meh", "great answer", "x"],
                   "label": [1, 0, 1, 0, 1, 0, 1, 0]})
PR = pd.DataFrame({"prompt": ["q1"], "chosen": ["good answer here"], "rejected": ["bad"], "is_tie": [False]})


@pytest.fixture
def local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.chdir(tmp_path)  # MLflow's SQLite store puts run artifacts under ./mlruns
    return load_settings(home=tmp_path / "home", mlflow_tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")


def _log(settings: Settings, model_dir: Path) -> tuple[str, str]:
    tr = tracking.Tracker(settings, experiment="no-pickle", run_name="r")
    uri = _log_model(tr, model_dir, EX)
    tr.finish()
    return tr.run_id, uri


def _lexical(tmp_path: Path) -> Path:
    return L.save(L.fit("tfidf_pairwise", EX, PR), tmp_path / "cand")


def _isolated_load(model_dir: Path, tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")} | {"PYTHONNOUSERSITE": "1"}
    roots = sorted({str(REPO), "/work/main", str(Path(sys.prefix).parent)} - {"/"})
    out = subprocess.run([sys.executable, "-I", str(REPO / "tests" / "load_model_isolated.py"), str(model_dir), *roots],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_registered_lexical_model_loads_without_the_repository_and_holds_no_pickle(local: Settings, tmp_path: Path) -> None:
    run_id, uri = _log(local, _lexical(tmp_path))
    version, _ = R.register_version(local, run_id=run_id, model_uri=uri, tags={"lakeloop.gate": "passed"})
    folder = R.download_version(local, version, tmp_path / "dl")
    mlmodel = (folder / "MLmodel").read_text()
    assert "loader_module: mlflow.pyfunc.loaders.code_model" in mlmodel and "cloudpickle" not in {p.split("/")[0] for p in R.artifact_files(folder)}
    assert R.pickle_files(folder) == [] and not list(folder.rglob("python_model.pkl"))
    reqs = (folder / "requirements.txt").read_text().lower()
    assert "lakeloop" not in reqs and "safetensors" in reqs and "joblib" not in reqs
    got = _isolated_load(folder, tmp_path)
    assert got["scores"][0] > got["scores"][1]
    assert got["modules"] and all(str(folder) in f for f in got["modules"].values() if f), got["modules"]
    assert "trainers.pyfunc" in got["modules"]


@pytest.mark.slow
def test_registered_encoder_model_is_safetensors_and_loads_without_the_repository(local: Settings, tmp_path: Path) -> None:
    from trainers.base_model import load_encoder, load_tokenizer, resolve_base_model
    from trainers.model import RewardModel, save_reward_model

    base = resolve_base_model("all-MiniLM-L6-v2")
    model_dir = save_reward_model(RewardModel(load_encoder(base)), load_tokenizer(base), tmp_path / "enc", max_length=64)
    assert R.pickle_files(model_dir) == [], "save_reward_model wrote a pickle"
    run_id, uri = _log(local, model_dir)
    version, _ = R.register_version(local, run_id=run_id, model_uri=uri, tags={"lakeloop.gate": "passed"})
    folder = R.download_version(local, version, tmp_path / "dl")
    assert R.pickle_files(folder) == [] and list(folder.rglob("*.safetensors"))
    got = _isolated_load(folder, tmp_path)
    assert len(got["scores"]) == 2 and all(0.0 <= s <= 1.0 for s in got["scores"])
    assert "trainers.model" in got["modules"] and all(str(folder) in f for f in got["modules"].values() if f)


def test_pickle_files_finds_pickles_by_name_magic_and_torch_zip(tmp_path: Path) -> None:
    import pickle

    import torch
    from safetensors.torch import save_file

    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "weird.dat").write_bytes(pickle.dumps({"x": 1}))
    torch.save({"w": torch.ones(2)}, tmp_path / "model.weights")
    (tmp_path / "python_model.pkl").write_bytes(b"not even a pickle")
    save_file({"w": torch.ones(2)}, str(tmp_path / "head.safetensors"))
    assert R.pickle_files(tmp_path) == ["model.weights", "python_model.pkl", "weird.dat"]


def test_registering_a_pickled_model_is_refused(local: Settings, tmp_path: Path) -> None:
    import mlflow

    from infra.errors import DataError

    class Pickled(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
            return pd.DataFrame({"score": [0.5] * len(model_input)})

    mlflow.set_tracking_uri(local.tracking_uri)
    mlflow.set_experiment("pickled")  # not the experiment id an earlier test left active in another store
    with mlflow.start_run() as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=Pickled())
    with pytest.raises(DataError, match="pickled files"):
        R.register_version(local, run_id=run.info.run_id, model_uri=info.model_uri, tags={"lakeloop.gate": "passed"})
