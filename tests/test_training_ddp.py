"""DDP on CPU, for real: ``torchrun --nproc_per_node=2`` (gloo) trains the reward model, checkpoints, is killed
mid-run (SIGKILL to every process of the job) and resumes to exactly the parameters of an uninterrupted 2-process run.
Size: 20 qa questions, 8 steps of batch 4 per process, max_length 32; about a minute on 2 cores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from infra.ports import free_port
from infra.settings import Settings
from tests.training_fixtures import write_gold
from trainers.checkpoint import checkpoint_key, latest_checkpoint, load_checkpoint
from trainers.config import TrainConfig
from trainers.train import FINAL

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
REPO = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")


def _cfg(lake: str, out: Path) -> TrainConfig:
    return TrainConfig(lake_root=lake, output_dir=str(out), track=False, max_length=32, batch_size=4, max_steps=8,
                       checkpoint_every=1, keep_checkpoints=20, log_every=1, num_threads=1, max_train_examples=16,
                       max_train_pairs=24, examples_version=0, pairs_version=0, lr=1e-4, freeze_layers=4,
                       candidates=("encoder",))


def _torchrun(cfg_file: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([str(TORCHRUN), "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={free_port()}",
                             "-m", "trainers.train", "--config", str(cfg_file)],
                            cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)


def _kill_job(job: subprocess.Popen) -> None:
    """SIGKILL torchrun and every process below it (its workers run in sessions of their own)."""
    pids, frontier = {job.pid}, [job.pid]
    while frontier:
        parent = frontier.pop()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent and int(stat.parent.name) not in pids:
                pids.add(int(stat.parent.name))
                frontier.append(int(stat.parent.name))
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    job.wait()


def _wait(job: subprocess.Popen, timeout: float = 300) -> int:
    """The job's exit status; on a timeout every process of the job is killed (no trainer left behind)."""
    try:
        return job.wait(timeout)
    except subprocess.TimeoutExpired:
        _kill_job(job)
        raise


def test_torchrun_two_processes_train_checkpoint_and_resume_to_identical_parameters(tmp_path: Path, settings: Settings,
                                                                                    qa_feedback_path: Path) -> None:
    lake = str(tmp_path / "lake")
    write_gold(lake, qa_feedback_path, questions=20)
    env = {**os.environ, **settings.env(), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for name in ("ref", "killed"):
        (tmp_path / f"{name}.json").write_text(json.dumps(_cfg(lake, tmp_path / name).model_dump()))

    ref = _torchrun(tmp_path / "ref.json", env, tmp_path / "ref.log")
    assert _wait(ref) == 0, (tmp_path / "ref.log").read_text()[-3000:]
    log = (tmp_path / "ref.log").read_text()
    assert "on cpu x2" in log and (tmp_path / "ref" / FINAL).exists()

    out = tmp_path / "killed"
    job = _torchrun(tmp_path / "killed.json", env, tmp_path / "killed.log")
    deadline = time.monotonic() + 600
    while not (out / "ckpt-00000003.json").exists():
        if job.poll() is not None or time.monotonic() > deadline:
            _wait(job, 0.1)
            pytest.fail("the job ended or stalled before it could be killed: " + (tmp_path / "killed.log").read_text()[-3000:])
        time.sleep(0.05)
    _kill_job(job)  # torchrun and both workers at once
    time.sleep(1.0)  # nothing may still be writing
    assert not (out / FINAL).exists()
    killed_at = latest_checkpoint(out)
    assert killed_at is not None and killed_at.name < "ckpt-00000008.pt"

    resumed = _torchrun(tmp_path / "killed.json", env, tmp_path / "resumed.log")
    assert _wait(resumed) == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    assert "resumed from ckpt-" in (tmp_path / "resumed.log").read_text()
    key = checkpoint_key(settings)
    a = load_checkpoint(tmp_path / "ref" / "ckpt-00000008.pt", key=key)["model"]
    b = load_checkpoint(out / "ckpt-00000008.pt", key=key)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
