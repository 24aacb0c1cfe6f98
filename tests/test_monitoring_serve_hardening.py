"""The real scoring service (a model from the real MLflow registry, predictions to the real Kafka, over HTTP)
refuses bad requests without harm: oversize bodies (413, the rest never read), invalid requests (422 that
never echo the input), a broker that does not answer (503, not counted as served); and it answers a good
request after each. The same cases with a fake publisher: tests/test_monitoring_serve_limits.py."""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from infra import services
from infra.settings import Settings
from monitors import rollout
from monitors.predictions import KafkaPublisher
from monitors.serve import create_app
from monitors.windows import load_window
from tests.conftest import free_port
from tests.monitoring_helpers import ServiceThread, make_pairs, register, train_scorer, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SECRET = "SECRET-51d2-do-not-echo"


@pytest.fixture(scope="module")
def served(mlflow_server: Settings, kafka: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, str]]:
    """A champion in the real registry, served with a real Kafka publisher on the module's own topics."""
    from feedback.kafka_io import ensure_topic

    tag = uuid.uuid4().hex[:8]
    s = mlflow_server.model_copy(update={
        "home": tmp_path_factory.mktemp("serve-hardening"), "registered_model_name": f"hardening-{tag}",
        "predictions_topic": f"predictions-{tag}", "feedback_topic": f"feedback-{tag}", "serve_port": free_port(),
        "topic_partitions": 1, "serve_max_body_bytes": 256 * 1024,
    })
    ensure_topic(s, s.predictions_topic)
    ensure_topic(s, s.feedback_topic)
    version = register(s, train_scorer(make_pairs(200, seed=3)))
    rollout.start_canary(s, version=version, actor="test", reason="hardening")
    yield s, version


@contextmanager
def scoring_service(s: Settings, *, ack_timeout_s: float = 2.0) -> Iterator[str]:
    with ServiceThread(create_app(s, publisher=KafkaPublisher(s, ack_timeout_s=ack_timeout_s), poll_seconds=60), s.serve_port) as svc:
        wait_for(svc.url, lambda b: b["ready"])
        yield svc.url


def good(url: str, n: int) -> dict:
    r = httpx.post(f"{url}/score", json={"prompt": f"question about rivers {n}", "response": "answer on rivers clear",
                                         "conversation_id": f"conv-{n}"}, timeout=15)
    assert r.status_code == 200, r.text
    return r.json()


def raw_http(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_bad_requests_are_refused_and_good_ones_still_served(served: tuple[Settings, str]) -> None:
    s, version = served
    since = datetime.now(timezone.utc) - timedelta(seconds=1)
    answered = []
    with scoring_service(s) as url:
        answered.append(good(url, 0))
        # 1. a declared 1 GiB body, none of it sent: 413 at once
        answer = raw_http(s.serve_port, b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                        b"Content-Length: 1073741824\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        answered.append(good(url, 1))
        # 2. a chunked body that passes the limit and never ends: 413 while it streams
        piece = b"x" * 16384
        chunks = (f"{len(piece):x}\r\n".encode() + piece + b"\r\n") * (s.serve_max_body_bytes // len(piece) + 1)
        answer = raw_http(s.serve_port, b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                        b"Transfer-Encoding: chunked\r\n\r\n" + chunks)
        assert answer.startswith(b"HTTP/1.1 413") and answer.count(b"HTTP/1.1") == 1, answer[:200]
        answered.append(good(url, 2))
        # 3. invalid requests: 422 with locations and messages, never the values sent
        for bad in ({"prompt": {"x": SECRET}, "response": "r", "conversation_id": "c"},
                    {"prompt": SECRET, "response": "r", "conversation_id": SECRET * 20},
                    {"prompt": f"{SECRET}\x00", "response": "r", "conversation_id": "c"}):
            r = httpx.post(f"{url}/score", json=bad, timeout=15)
            assert r.status_code == 422 and SECRET not in r.text and '"input"' not in r.text, r.text
        r = httpx.post(f"{url}/score", content=f'{{"prompt": "{SECRET}"', headers={"content-type": "application/json"})
        assert r.status_code == 422 and SECRET not in r.text
        answered.append(good(url, 3))
        stats = httpx.get(f"{url}/stats").json()
        assert stats["requests"] == {version: 4} and stats["publish_sent"] == 4 and stats["publish_failed"] == 0
    # exactly the good requests reached Kafka, each acknowledged before its answer
    window = load_window(s, since=since, until=datetime.now(timezone.utc) + timedelta(seconds=1), source="kafka")
    assert sorted(window.predictions["request_id"]) == sorted(a["request_id"] for a in answered)
    assert window.invalid_total == 0


@contextmanager
def broker_paused(platform: Settings) -> Iterator[None]:
    """The session's Kafka stops answering (SIGSTOP: connections stay open, nothing is read) until the block ends."""
    pid = next(st.pid for st in services.status(platform) if st.name == "kafka")
    assert pid is not None, "the session's Kafka is not running"
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 60
        while not services.kafka_healthy(platform.bootstrap_servers, 2.0):
            assert time.monotonic() < deadline, "Kafka did not come back after SIGCONT"


def test_kafka_not_answering_gives_503_not_counted_then_recovers(served: tuple[Settings, str], kafka: Settings) -> None:
    s, version = served
    with scoring_service(s, ack_timeout_s=1.0) as url:
        good(url, 10)
        with broker_paused(kafka):
            t0 = time.monotonic()
            r = httpx.post(f"{url}/score", json={"prompt": "p", "response": "r", "conversation_id": "conv-down"}, timeout=15)
            waited = time.monotonic() - t0
            assert r.status_code == 503, r.text
            body = r.json()
            assert "not recorded" in body["error"] and body["hint"] and "score" not in body
            assert waited < 5.0  # the ack timeout (1 s) bounds the wait, not Kafka's defaults (30 s, 120 s)
            assert httpx.get(f"{url}/healthz", timeout=2).status_code == 200  # liveness does not wait on Kafka
            stats = httpx.get(f"{url}/stats").json()
            assert stats["requests"] == {version: 1} and stats["errors"] == {}
            assert stats["publish_failed"] == 1 and stats["publish_last_error"]
        good(url, 11)  # the broker answers again: so does the service
        stats = httpx.get(f"{url}/stats").json()
        assert stats["requests"] == {version: 2} and stats["publish_sent"] == 2
