"""Reference feedback end to end on real services: a response scored by the real scoring service (a model from the
real MLflow registry, its prediction record through the real Kafka), feedback sent by the Python client through the
real collector (sync and async clients, thumbs, a rating, implicit signals) with only the ids the service returned, both topics ingested by the real ingestor, then curated: the
silver and gold rows carry the scored prompt (PII redacted), response, model name and version; a reference whose
prediction never came stays pending, out of silver, still in bronze."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone
from pathlib import Path

import httpx
import polars as pl
import pytest

from features import lake
from features.arrivals import reference_days
from features import pipeline_local as local
from features.config import CurationConfig
from feedback.client import AsyncFeedbackClient, FeedbackClient
from feedback.kafka_io import ensure_topic
from infra.settings import Settings
from infra.tables import table_uri
from monitors import rollout
from monitors.predictions import KafkaPublisher
from monitors.serve import create_app
from tests.conftest import free_port
from tests.monitoring_helpers import ServiceThread, make_pairs, register, train_scorer, wait_for
from tests.test_collector import bronze, collector, ingest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
KEY = b"reference-test-key-0123456789"
PROMPT = "My email is jane.roe@example.org: which river flows through the city of Lima in Peru?"
ANSWER = "The Rimac river flows through Lima, from the Andes down to the Pacific Ocean."


def test_reference_feedback_gets_the_scored_prompt_response_and_model(mlflow_server: Settings, kafka: Settings,
                                                                    tmp_path: Path, monkeypatch) -> None:
    tag = uuid.uuid4().hex[:8]
    s = mlflow_server.model_copy(update={
        "home": tmp_path / "home", "lake_root": str(tmp_path / "lake"), "registered_model_name": f"refs-{tag}",
        "predictions_topic": f"predictions-{tag}", "feedback_topic": f"feedback-{tag}", "serve_port": free_port(),
        "collector_port": free_port(), "topic_partitions": 1,
    })
    for k, v in s.env().items():
        monkeypatch.setenv(k, v)
    ensure_topic(s, s.predictions_topic)
    ensure_topic(s, s.feedback_topic)
    version = register(s, train_scorer(make_pairs(200, seed=3)))
    rollout.start_canary(s, version=version, actor="test", reason="reference feedback")  # the first champion

    with ServiceThread(create_app(s, publisher=KafkaPublisher(s), poll_seconds=60), s.serve_port) as svc:
        wait_for(svc.url, lambda b: b["ready"])
        r = httpx.post(f"{svc.url}/score", json={"prompt": PROMPT, "response": ANSWER, "conversation_id": "conv-lima"},
                       timeout=30)
        assert r.status_code == 200, r.text
        scored = r.json()
    assert scored["model_version"] == version

    who = {"user_id": "u-lima", "conversation_id": "conv-lima"}
    with collector(s) as url, FeedbackClient(url, app_id="ref-app") as fb:
        fb.thumbs(scored["response_id"], 1, **who)  # by response_id
        fb.rating(scored["request_id"], 5, **who)  # by request_id
        fb.signal(scored["response_id"], "copy", **who)
        fb.thumbs("resp-never-scored", -1, **who)  # its prediction never comes

        async def dwell() -> AsyncFeedbackClient:
            async with AsyncFeedbackClient(url, app_id="ref-app") as afb:
                await afb.signal(scored["response_id"], "dwell", 12.5, **who)
            return afb

        afb = asyncio.run(dwell())
    assert len(fb.result.accepted) == 4 and fb.result.rejected == [] and len(afb.result.accepted) == 1

    ingest(s)
    from feedback.ingestor import Ingestor
    from feedback.streams import get_stream

    Ingestor(s, get_stream(s, "predictions"), group=f"g-{tag}", say=print).run(once=True)
    assert len(bronze(s)) == 5 and len(bronze(s, "bronze/predictions", ("response_id",))) == 1

    day = datetime.now(timezone.utc).date()
    # the arrival sensor sees the reference rows in the real ingestor's Delta log (min model_name ""), so a late
    # prediction would make the day due again
    assert reference_days(table_uri(s, "bronze/feedback_events")) == {day.isoformat()}
    rep = local.curate_silver(s, day, cfg=CurationConfig(), key=KEY)
    assert rep.stats["reference_joined"] == 4 and rep.stats["reference_pending"] == 1 and rep.stats["reference_late"] == 0
    silver = lake.read(table_uri(s, "silver/feedback"))
    assert silver is not None and silver.height == 4
    redacted = PROMPT.replace("jane.roe@example.org", "[EMAIL]")
    assert set(silver.select("prompt", "response", "model_name", "model_version", "response_id").rows()) == {
        (redacted, ANSWER, s.registered_model_name, version, scored["response_id"])}
    signals = silver.filter(pl.col("event_type") == "signal").sort("signal_name")
    assert signals.select("signal_name", "value").rows() == [("copy", 1.0), ("dwell", 12.5)]
    assert "resp-never-scored" in [r["response_id"] for r in bronze(s, columns=("response_id",))]  # kept in bronze

    local.curate_examples(s, day, cfg=CurationConfig())
    gold = lake.read(table_uri(s, "gold/training_examples"))
    assert gold is not None
    row = gold.filter(pl.col("response_id") == scored["response_id"]).row(0, named=True)
    assert (row["prompt"], row["response"], row["model_version"], row["n_events"], row["label"]) == (
        redacted, ANSWER, version, 2, 1.0)
