"""The rollout loop on real services: MLflow registry, Kafka topics, the scoring service over HTTP,
a local alert receiver. A worse canary is rolled back, a better one promoted, racing operators never
leave the aliases inconsistent, and the service answers throughout."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import httpx
import pytest

from infra.secrets import reveal
from infra.settings import Settings
from monitors import model_store, rollout
from monitors.alerts import notifier_from_settings
from monitors.canary_job import run_canary_window
from monitors.decision import Promote, Rollback, RolloutPolicy
from monitors.predictions import COLUMNS, KafkaPublisher
from monitors.serve import create_app
from tests.conftest import free_port
from tests.monitoring_helpers import Receiver, ServiceThread, drive_window, make_pairs, register, train_scorer, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
POLICY = RolloutPolicy(steps=(0.1, 0.5), min_feedback=20)
REQUESTS_PER_WINDOW = 300  # at a 10% canary share: ~30 labelled canary predictions per window


@pytest.fixture(scope="module")
def models():
    data = make_pairs(800, seed=7)
    return train_scorer(data), train_scorer(data, flip=True)


@pytest.fixture()
def mon(mlflow_server: Settings, kafka: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings of one test: own model name, topics, home and port on the session's real services."""
    from feedback.kafka_io import ensure_topic

    tag = uuid.uuid4().hex[:8]
    s = mlflow_server.model_copy(
        update={"home": tmp_path / "home", "registered_model_name": f"reward-{tag}", "predictions_topic": f"predictions-{tag}",
                "feedback_topic": f"feedback-{tag}", "serve_port": free_port(), "topic_partitions": 2}
    )
    ensure_topic(s, s.predictions_topic)
    ensure_topic(s, s.feedback_topic)
    for k, v in s.env().items():  # for Dagster resources that read settings from the environment
        monkeypatch.setenv(k, v)
    return s


def analysis(s: Settings, since: datetime):
    time.sleep(0.5)  # the publisher's linger; then the window is closed
    return run_canary_window(s, since=since, until=datetime.now(timezone.utc), notifier=notifier_from_settings(s),
                             policy=POLICY, source="kafka", actor="test-analysis")


def test_no_champion_is_a_clear_503(mon: Settings) -> None:
    with ServiceThread(create_app(mon, publisher=None, poll_seconds=0.5), mon.serve_port) as svc:
        assert httpx.get(f"{svc.url}/healthz").status_code == 200
        ready = httpx.get(f"{svc.url}/readyz")
        assert ready.status_code == 503 and "champion" in ready.json()["error"] and ready.json()["hint"]
        r = httpx.post(f"{svc.url}/score", json={"prompt": "p", "response": "r", "conversation_id": "c"})
        assert r.status_code == 503 and "lakeloop promote" in r.json()["hint"]
        bad = httpx.post(f"{svc.url}/score", json={"prompt": "", "response": "r"})
        assert bad.status_code == 422


def test_worse_canary_is_rolled_back_within_two_windows(mon: Settings, models, monkeypatch: pytest.MonkeyPatch) -> None:
    good, flipped = models
    v1, v2 = register(mon, good), register(mon, flipped)
    rollout.start_canary(mon, version=v1, actor="test", reason="first model")
    with Receiver() as rx:
        s = mon.model_copy(update={"alert_webhooks": f"slack+{rx.url('/slack')},json+{rx.url('/json')}"})
        monkeypatch.setenv("LAKELOOP_ALERT_WEBHOOKS", reveal(s.alert_webhooks))  # the Dagster resource reads the env
        rollout.start_canary(s, version=v2, policy=POLICY, actor="test", reason="retrained")
        publisher = KafkaPublisher(s)
        with ServiceThread(create_app(s, publisher=publisher, poll_seconds=0.5), s.serve_port) as svc:
            wait_for(svc.url, lambda b: b["canary"] == v2 and b["canary_share"] == 0.1)
            decisions = []
            for window in range(2):
                since = datetime.now(timezone.utc)
                served = drive_window(s, svc.url, seed=100 + window)
                if window == 0:  # the first window goes through the Dagster asset, in process
                    from orchestration.assets.monitoring import rollout_decision
                    from orchestration.assets.monitoring.resources import MonitoringResource
                    from orchestration.resources import LakeloopSettings

                    time.sleep(0.5)
                    res = dg.materialize([rollout_decision], resources={
                        "lakeloop": LakeloopSettings(), "monitoring": MonitoringResource(source="kafka", window_minutes=5)})
                    md = res.asset_materializations_for_node("rollout_decision")[0].metadata
                    decisions.append(md["decision"].value)
                    # the paired design (the default): the registered models themselves scored every label of both arms
                    metrics = md["metrics"].value
                    assert metrics["paired_n_units"] >= 30 and metrics["paired_n_labels"] == metrics["paired_n_units"]
                    assert metrics["paired_agreement_canary"] < metrics["paired_agreement_champion"]
                else:
                    decisions.append(type(analysis(s, since).decision).__name__)
                if decisions[-1] == "Rollback":
                    break
            assert "Rollback" in decisions, decisions
            assert {r["alias"] for r in served} == {"champion", "canary"}
            after = wait_for(svc.url, lambda b: b["canary"] is None)
            assert after["champion"] == v1
            r = httpx.post(f"{svc.url}/score", json={"prompt": "p", "response": "r", "conversation_id": "c100-1"})
            assert r.json()["model_version"] == v1
        paths = {p for p, _ in rx.received}
        assert paths == {"/slack", "/json"}
        body = dict(rx.received)["/json"]
        assert body["kind"] == "rollback" and v2 in body["summary"] and body["links"]["canary_model"].endswith(f"/versions/{v2}")
        picture = body["links"]["canary_picture"]  # drawn after the rollback, before its alert: the alert links it
        assert picture.startswith(f"{s.tracking_uri}/get-artifact?") and f"canary%2Fv{v2}-" in picture
        assert httpx.get(picture, timeout=30).headers["content-type"] == "image/png"
    assert rollout.read_status(s) == rollout.RolloutStatus(champion=v1, canary=None, challenger=None, canary_share=0.0)
    assert model_store.version_tags(s, v2)[model_store.STATE_TAG] == "rolled_back"
    from trainers.registry import ledger_entries

    ledger = ledger_entries(s)
    ledger = ledger[ledger["model_name"] == s.registered_model_name]
    assert list(ledger["alias"]) == ["champion", "canary", "canary"] and list(ledger["action"]) == ["set", "set", "delete"]
    # the predictions on the topic follow the contract, and the ingestor's validator accepts them
    from feedback.predictions import validate_prediction
    from monitors.predictions import read_topic

    read = read_topic(s, s.predictions_topic, since=datetime.now(timezone.utc) - timedelta(minutes=10), until=datetime.now(timezone.utc),
                      validate=validate_prediction)
    assert read.invalid == 0 and len(read.records) >= REQUESTS_PER_WINDOW and set(read.records[0]) == set(COLUMNS)


def test_better_canary_is_promoted_through_the_steps(mon: Settings, models) -> None:
    good, flipped = models
    v1, v2 = register(mon, flipped), register(mon, good)
    rollout.start_canary(mon, version=v1, actor="test", reason="first model")
    with Receiver() as rx:
        s = mon.model_copy(update={"alert_webhooks": f"teams+{rx.url('/teams')}"})
        rollout.start_canary(s, version=v2, policy=POLICY, actor="test", reason="retrained")
        with ServiceThread(create_app(s, publisher=KafkaPublisher(s), poll_seconds=0.5), s.serve_port) as svc:
            decisions, results = [], []
            for window in range(4):
                wait_for(svc.url, lambda b: b["canary"] is None or b["canary_share"] == rollout.read_status(s).canary_share)
                since = datetime.now(timezone.utc)
                drive_window(s, svc.url, seed=200 + window)
                result = analysis(s, since)
                decisions.append(result.decision)
                results.append(result)
                if isinstance(result.decision, Promote) and result.decision.final:
                    break
            assert [type(d) for d in decisions][-2:] == [Promote, Promote], decisions
            # pooled since the canary started (promotion ledger), one look per window: not the last window alone
            first, last = results[0].comparison, results[-1].comparison
            assert last.n_looks >= 2 and last.canary.n_feedback > first.canary.n_feedback, (first.metrics(), last.metrics())
            assert decisions[-2].to_share == 0.5 and decisions[-1].final
            wait_for(svc.url, lambda b: b["champion"] == v2 and b["canary"] is None)
        cards = [a["content"] for _, b in rx.received for a in b["attachments"]]  # Teams Workflows: Adaptive Cards
        assert [c["type"] for c in cards] == ["AdaptiveCard"] and "promoted" in cards[0]["body"][1]["text"]
    assert rollout.read_status(s).champion == v2
    assert model_store.version_tags(s, v2)[model_store.STATE_TAG] == "champion"
    assert model_store.version_tags(s, v1)[model_store.STATE_TAG] == "retired"
    assert not any(isinstance(d, Rollback) for d in decisions)


def test_racing_operators_never_leave_aliases_inconsistent(mon: Settings, models) -> None:
    good, flipped = models
    v1, v2 = register(mon, good), register(mon, flipped)
    rollout.start_canary(mon, version=v1, actor="test", reason="first")
    rollout.start_canary(mon, version=v2, policy=POLICY, actor="test", reason="canary")
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def operator(i: int) -> None:
        barrier.wait()
        try:
            rollout.promote(mon, actor=f"op{i}", reason="race")
            outcomes.append("won")
        except Exception as exc:  # the losers: conflict or "no canary any more"
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=operator, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("won") == 1, outcomes
    assert set(outcomes) - {"won"} <= {"AliasConflictError", "DataError"}
    assert rollout.read_status(mon) == rollout.RolloutStatus(champion=v2, canary=None, challenger=None, canary_share=0.0)
    from trainers.registry import ledger_entries

    ledger = ledger_entries(mon)
    ledger = ledger[ledger["model_name"] == mon.registered_model_name]
    assert (ledger["alias"] == "champion").sum() == 2  # the first champion and exactly one promotion
    assert list(ledger["to_version"])[-1] == v2


def test_service_keeps_answering_while_aliases_change(mon: Settings, models) -> None:
    good, flipped = models
    v1, v2, v3 = register(mon, good), register(mon, flipped), register(mon, good)
    rollout.start_canary(mon, version=v1, actor="test", reason="first")
    stop = threading.Event()
    seen: list[tuple[int, str | None]] = []

    with ServiceThread(create_app(mon, publisher=None, poll_seconds=0.3), mon.serve_port) as svc:
        wait_for(svc.url, lambda b: b["champion"] == v1)

        def hammer() -> None:
            with httpx.Client(timeout=10) as c:
                i = 0
                while not stop.is_set():
                    r = c.post(f"{svc.url}/score", json={"prompt": "how tall", "response": "answer precise", "conversation_id": f"h{i}"})
                    seen.append((r.status_code, r.json().get("model_version") if r.status_code == 200 else r.text))
                    i += 1

        t = threading.Thread(target=hammer)
        t.start()
        try:
            rollout.start_canary(mon, version=v2, policy=POLICY, actor="test", reason="canary")
            wait_for(svc.url, lambda b: b["canary"] == v2)
            rollout.step_up(mon, 0.5, actor="test", reason="step")
            wait_for(svc.url, lambda b: b["canary_share"] == 0.5)
            rollout.promote(mon, actor="test", reason="promote")
            wait_for(svc.url, lambda b: b["champion"] == v2 and b["canary"] is None)
            rollout.start_canary(mon, version=v3, policy=POLICY, actor="test", reason="next canary")
            wait_for(svc.url, lambda b: b["canary"] == v3)
            rollout.rollback(mon, actor="test", reason="changed my mind")
            wait_for(svc.url, lambda b: b["canary"] is None)
            time.sleep(0.5)
        finally:
            stop.set()
            t.join()
    codes = [c for c, _ in seen]
    assert len(seen) > 50 and set(codes) == {200}, [s for s in seen if s[0] != 200][:3]
    versions = [v for _, v in seen]
    assert {v1, v2} <= set(versions)
    assert versions[-1] == v2  # the promoted champion answers at the end


def test_a_superseded_waiting_challenger_is_retired(mon: Settings, models) -> None:
    """v2 waits as challenger while v3 wins the champion's place: autopilot retires v2 instead of canarying it."""
    from monitors.autopilot import start_next
    from trainers import registry

    good, _ = models
    v1, v2, v3 = (register(mon, good) for _ in range(3))
    rollout.start_canary(mon, version=v1, actor="test", reason="first model")
    registry.set_alias_cas(mon, "challenger", None, v2, actor="test", reason="gate passed")
    registry.set_alias_cas(mon, "champion", v1, v3, actor="test", reason="v3 won its canary")
    with Receiver() as rx:
        s = mon.model_copy(update={"alert_webhooks": rx.url("/hook")})
        nxt, delivery = start_next(s, policy=POLICY, actor="test-autopilot", notifier=notifier_from_settings(s))
        assert nxt.action == "retire" and delivery is not None and delivery.status == "sent", nxt
        assert [b["kind"] for _, b in rx.received] == ["challenger_retired"]
    after = rollout.read_status(mon)
    assert (after.champion, after.canary, after.challenger) == (v3, None, None)
    assert model_store.version_tags(mon, v2)[model_store.STATE_TAG] == "retired"
    assert "no longer the best" in model_store.version_tags(mon, v2)[model_store.HISTORY_TAG]
    last = registry.ledger_entries(mon).iloc[-1]
    assert last["alias"] == "challenger" and last["action"] == "delete" and "retired" in last["reason"], last.to_dict()
