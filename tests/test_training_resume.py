"""Kill -9 a real training mid-run and resume it: it ends with exactly the parameters of an uninterrupted
run. A truncated checkpoint is rejected with a clear error. (CPU, no services: tracking off.)"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from infra.errors import DataError
from infra.settings import Settings
from tests.training_fixtures import write_gold
from trainers.checkpoint import latest_checkpoint
from trainers.config import TrainConfig
from trainers.train import FINAL, train

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _cfg(lake: str, out: Path) -> TrainConfig:
    return TrainConfig(lake_root=lake, output_dir=str(out), track=False, max_length=32, batch_size=4, max_steps=8,
                       checkpoint_every=1, keep_checkpoints=20, log_every=1, num_threads=1, max_train_examples=16,
                       max_train_pairs=24, examples_version=0, pairs_version=0, lr=1e-4, freeze_layers=4)


def _final_params(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "ckpt-00000008.pt", map_location="cpu", weights_only=False)["model"]


def test_kill_and_resume_ends_with_identical_parameters(tmp_path: Path, settings: Settings, qa_feedback_path: Path) -> None:
    lake = str(tmp_path / "lake")
    write_gold(lake, qa_feedback_path, questions=20)
    ref = train(_cfg(lake, tmp_path / "ref"), settings, say=lambda m: None)
    assert ref.steps == 8 and (tmp_path / "ref" / FINAL).exists()

    out = tmp_path / "killed"
    (tmp_path / "cfg.json").write_text(json.dumps(_cfg(lake, out).model_dump()))
    env = {**os.environ, **settings.env()}
    proc = subprocess.Popen([sys.executable, "-m", "trainers.train", "--config", str(tmp_path / "cfg.json")], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (out / "ckpt-00000003.json").exists():
        assert proc.poll() is None and time.time() < deadline, "trainer ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / FINAL).exists()
    killed_at = latest_checkpoint(out)
    assert killed_at is not None and killed_at.name < "ckpt-00000008.pt"

    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    last = latest_checkpoint(broken)
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])
    with pytest.raises(DataError, match="truncated") as err:
        train(_cfg(lake, broken), settings, say=lambda m: None)
    assert "delete" in (err.value.hint or "")

    resumed = train(_cfg(lake, out), settings, say=lambda m: None)
    assert resumed.steps == 8 and resumed.resumed_from_step >= 3
    a, b = _final_params(tmp_path / "ref"), _final_params(out)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    again = train(_cfg(lake, out), settings, say=lambda m: None)  # finished: a no-op returning the same result
    assert again == resumed


def test_resume_with_rater_bias_and_split_gradients_ends_identical(tmp_path: Path, settings: Settings, qa_feedback_path: Path) -> None:
    """The qa_feedback recipe (docs/design/training.md): gamma is checkpointed, the warm start is not redone."""
    lake = str(tmp_path / "lake")
    write_gold(lake, qa_feedback_path, questions=20)
    recipe = {"rater_length_bias": True, "pointwise_trains_text": False, "probe_steps": 20, "head_l2": 0.01, "pair_center_weight": 1.0}
    ref = train(_cfg(lake, tmp_path / "ref").model_copy(update=recipe), settings, say=lambda m: None)
    out = tmp_path / "cut"
    train(_cfg(lake, out).model_copy(update=recipe), settings, say=lambda m: None)
    for p in out.iterdir():  # back to the state of a run stopped after step 4: no final marker, no later checkpoints
        if p.name == FINAL or (p.name.startswith("ckpt-") and int(p.name[5:13]) > 4):
            p.unlink()
    assert latest_checkpoint(out) is not None and latest_checkpoint(out).name == "ckpt-00000004.pt"  # type: ignore[union-attr]
    said: list[str] = []
    resumed = train(_cfg(lake, out).model_copy(update=recipe), settings, say=said.append)
    assert resumed.steps == ref.steps == 8 and resumed.resumed_from_step == 4
    assert not any("warm start" in m for m in said)
    a, b = _final_params(tmp_path / "ref"), _final_params(out)
    assert "rater_length_bias" in a and float(a["rater_length_bias"]) != 0.0
    assert any(" center " in m for m in said)  # the centring loss is computed in the training steps...
    uncentred = train(_cfg(lake, tmp_path / "uncentred").model_copy(update={**recipe, "pair_center_weight": 0.0}), settings, say=lambda m: None)
    assert uncentred.steps == 8
    c = _final_params(tmp_path / "uncentred")
    assert not torch.equal(a["head.weight"], c["head.weight"])  # ...and it changes what they learn
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
