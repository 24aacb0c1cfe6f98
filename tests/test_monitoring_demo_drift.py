"""The demo's own traffic through the drift check, with the demo's settings (passages on), without services.

The backlog goes through the demo's ``_produce`` and the live traffic through its ``_traffic`` (``feedback.simulate``
with the demo's ``SimConfig``); only the transports are stand-ins: the Kafka producer collects what is sent and
the ingestor's own validation lands it in the bronze tables, and the scoring service is a deterministic scorer
that records each prediction as ``lakeloop serve`` does. Curation's local engine builds the gold tables from the
backlog, ``training_reference`` reads them, and each window is loaded by ``load_window`` from the lake, as the
``drift_report`` asset does. Stationary windows must not be flagged, windows of cut answers must be.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest

from infra.settings import Settings, load_settings
from infra.tables import table_uri
from monitors.drift import DriftVerdict, check_drift
from monitors.drift_job import Reference, _featurize, prepare_reference
from monitors.predictions import PredictionRecord, rfc3339_now
from monitors.windows import current_frame, load_window, score_frame, training_reference
from orchestration.demo import DemoConfig

pytestmark = pytest.mark.slow
# Rows embedded per window and in the reference. The demo's drift_report embeds 256 (MonitoringResource.embed_sample);
# 96 keeps the test near a minute on two cores and still judges the embeddings (>= DriftConfig.min_rows per window).
EMBED_SAMPLE = 96


def land(settings: Settings, stream_name: str, values: list[bytes]) -> int:
    """Records as the ingestor lands them: its stream's validation, valid rows to the bronze table (dead letters
    are left out); returns the rows landed."""
    from deltalake import write_deltalake

    from feedback.batch import RawBatch
    from feedback.streams import get_stream

    stream = get_stream(settings, stream_name)  # type: ignore[arg-type]
    raw = RawBatch(stream.topic)
    for offset, value in enumerate(values):
        raw.add(0, offset, None, value)
    table = raw.validated(stream.to_row).valid_table(stream.schema, stream.row_columns, stream.time_column, datetime.now(UTC))
    write_deltalake(stream.target_uri(settings), table, mode="append", partition_by=list(stream.partition_by) or None)
    return table.num_rows


class Outbox:
    """Stands in for ``FeedbackProducer``: keeps what the demo sends (events, or malformed payloads as bytes)."""

    sent: ClassVar[list[bytes]] = []

    def __init__(self, settings: Settings) -> None:
        pass

    def send(self, event: dict[str, Any] | bytes, key: str | None = None) -> None:
        Outbox.sent.append(event if isinstance(event, bytes) else json.dumps(event).encode())

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class RewardStub:
    """A deterministic reward model that reads what the real one reads: the response's length and its lexical
    support by the prompt (``trainers.model.support``; near 0 without the passages, ~0.8 with them)."""

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        from trainers.model import support

        sup = np.array([support(p, r) for p, r in zip(frame["prompt"], frame["response"], strict=True)])
        chars = frame["response"].str.len().to_numpy(dtype=float)
        return 1.0 / (1.0 + np.exp(-(4.0 * (sup - 0.6) + (np.log1p(chars) - 6.0))))


class Service:
    """Stands in for the scoring service (``Scorer`` of `lakeloop serve`): scores with ``RewardStub`` and records
    each prediction as the service publishes it."""

    records: ClassVar[list[bytes]] = []

    def __init__(self, url: str) -> None:
        self.model = RewardStub()

    def score(self, *, prompt: str, response: str, conversation_id: str, request_id: str, response_id: str) -> dict:
        value = float(self.model.predict(pd.DataFrame({"prompt": [prompt], "response": [response]}))[0])
        Service.records.append(PredictionRecord(request_id, response_id, conversation_id, "lakeloop-reward", "1", "champion",
                                                value, 1.0, prompt, response, rfc3339_now()).to_json())
        return {"score": value, "alias": "champion", "model_version": "1"}


@dataclass
class DemoLake:
    settings: Settings
    cfg: DemoConfig
    reference: Reference
    raw_reference: pd.DataFrame


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, qa_feedback_path: Path) -> DemoLake:
    """Phase 1 of the demo up to the drift reference: backlog -> bronze -> curation -> gold; the reference is the
    gold tables scored by ``RewardStub`` and prepared as ``drift_report`` prepares it."""
    from deltalake import DeltaTable

    from features.engine import STAGES, curate
    from orchestration.assets.curation.resources import CurationResource
    from orchestration.demo import _backlog, _produce

    mp = pytest.MonkeyPatch()
    mp.setattr("feedback.producer.FeedbackProducer", Outbox)
    cfg = DemoConfig(data_path=qa_feedback_path)
    assert cfg.passages, "the demo's apps log the RAG prompt"
    settings = load_settings(home=tmp_path_factory.mktemp("demo") / "home", autopilot=False)
    Outbox.sent = []
    _produce(settings, _backlog(cfg), cfg)
    mp.undo()
    assert land(settings, "feedback", Outbox.sent) > 3000
    days = sorted(set(DeltaTable(table_uri(settings, "bronze/feedback_events")).to_pandas(columns=["event_date"])["event_date"]))
    ccfg = CurationResource().config(settings)
    for day in days:
        for stage in STAGES:
            curate(stage, settings, day, cfg=ccfg, key=b"demo-drift-test-key-0123456789ab")
    raw = training_reference(settings, sample=cfg.reference_sample)
    raw["score"] = score_frame(RewardStub(), raw)
    return DemoLake(settings, cfg, prepare_reference(raw, embed_sample=EMBED_SAMPLE), raw)


def window(demo: DemoLake, monkeypatch: pytest.MonkeyPatch, *, first: int, count: int, run_id: int, drifted: bool) -> tuple[pd.DataFrame, DriftVerdict]:
    """One window of the demo's traffic (``orchestration.demo._traffic``), loaded from the lake and checked."""
    from orchestration.demo import _traffic

    monkeypatch.setattr("feedback.producer.FeedbackProducer", Outbox)
    monkeypatch.setattr("feedback.simulate.Scorer", Service)
    Outbox.sent, Service.records = [], []
    since = datetime.now(UTC)
    stats = _traffic(demo.settings, demo.cfg, first=first, count=count, run_id=run_id, drifted=drifted, say=lambda _: None)
    assert stats.requests == 4 * count and stats.drifted_requests == (stats.requests if drifted else 0)
    land(demo.settings, "predictions", Service.records)
    land(demo.settings, "feedback", Outbox.sent)
    until = datetime.now(UTC) + timedelta(seconds=1)
    w = load_window(demo.settings, since=since, until=until)
    current = current_frame(w.predictions, w.feedback)
    features = _featurize(current, demo.reference.projector, EMBED_SAMPLE, 0)
    return current, check_drift(demo.reference.features, features)


def scores(v: DriftVerdict) -> dict[str, tuple[float, float]]:
    return {c.column: (round(c.score, 3), round(c.threshold, 3)) for c in v.columns}


@pytest.mark.parametrize(("first", "run_id"), [
    (400, 1),  # the demo's live phase: the live_questions after the backlog's, run 1
    (440, 2),  # the questions the drift windows replay, undrifted
])
def test_stationary_demo_windows_are_not_flagged(demo: DemoLake, monkeypatch: pytest.MonkeyPatch, first: int, run_id: int) -> None:
    cfg = demo.cfg
    current, v = window(demo, monkeypatch, first=first, count=cfg.live_questions, run_id=run_id, drifted=False)
    assert not v.drifted, v.summary()
    assert v.n_current == 4 * cfg.live_questions and {c.column for c in v.columns} >= {"prompt_chars", "emb_centroid_cos", "score", "thumbs_down"}
    # the prompt scored is the one the feedback carries: the RAG prompt, as the gold rows have it (normalized)
    assert current["prompt"].str.contains("\n\nPassages:\n[1] ", regex=False).all() and current["score"].notna().all()
    ref = demo.raw_reference
    assert ref["prompt"].str.contains(" Passages: [1] ", regex=False).mean() > 0.95
    # the score reference is the held-out split (new prompts to the champion, like live traffic); text from both
    held_out = ref["split"] != "train"
    assert held_out.sum() >= 50 and ref.loc[held_out, "score"].notna().all() and ref.loc[~held_out, "score"].isna().all()
    assert (~held_out).sum() == cfg.reference_sample


@pytest.mark.parametrize("w", [0, 1])
def test_cut_answer_demo_windows_are_flagged(demo: DemoLake, monkeypatch: pytest.MonkeyPatch, w: int) -> None:
    cfg = demo.cfg  # the demo's drift phase: window w of drift_window_questions after the live questions, run 10 + w
    _, v = window(demo, monkeypatch, first=cfg.backlog_questions + cfg.live_questions + w * cfg.drift_window_questions,
                  count=cfg.drift_window_questions, run_id=10 + w, drifted=True)
    assert v.groups.get("data") and v.groups.get("prediction"), v.summary()
    drifted = {c.column for c in v.columns if c.drifted}
    assert {"response_chars", "response_words", "score"} <= drifted, v.summary()
    assert not drifted & {"prompt_chars", "prompt_words"}, v.summary()  # the prompts did not change
