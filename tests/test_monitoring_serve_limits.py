"""The scoring service refuses bad requests without harm: unit level, over real HTTP (uvicorn on loopback),
with a fake registry and a publisher that can be told to fail. tests/test_monitoring_serve_hardening.py does
the same against the real services (MLflow, Kafka)."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from feedback.predictions import validate_prediction
from infra.settings import Settings, load_settings
from monitors import serve
from monitors.predictions import PredictionRecord, PublishError
from tests.conftest import free_port
from tests.monitoring_helpers import ServiceThread

SECRET = "SECRET-7f3a-do-not-echo"
GOOD = {"prompt": "what is a river?", "response": "flowing water", "conversation_id": "c-good"}


class _Model:
    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"score": [0.75] * len(frame)})


class FakePublisher:
    """Acknowledges records, or refuses them while ``down`` is set."""

    def __init__(self) -> None:
        self.records: list[PredictionRecord] = []
        self.down = threading.Event()
        self.sent = self.failed = 0
        self.last_error: str | None = None

    def publish(self, record: PredictionRecord) -> None:
        if self.down.is_set():
            self.failed += 1
            self.last_error = "broker down"
            raise PublishError("Kafka did not acknowledge the prediction (broker down)", hint="retry later")
        self.records.append(record)
        self.sent += 1


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(serve.model_store, "aliases", lambda s: {"champion": "1"})
    monkeypatch.setattr(serve.model_store, "canary_share", lambda s: 0.0)
    monkeypatch.setattr(serve.model_store, "load_pyfunc", lambda s, v: _Model())
    settings = load_settings(home=tmp_path / "home", serve_port=free_port(), serve_max_body_bytes=64 * 1024)
    publisher = FakePublisher()
    with ServiceThread(serve.create_app(settings, publisher=publisher, poll_seconds=60), settings.serve_port) as svc:
        yield svc, publisher, settings


def _good(url: str) -> httpx.Response:
    r = httpx.post(f"{url}/score", json=GOOD, timeout=10)
    assert r.status_code == 200, r.text
    return r


def _raw_http(port: int, head: bytes, body: bytes, *, timeout: float = 10.0) -> bytes:
    """Send ``head`` and ``body`` on one connection, then read what the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + body)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_declared_oversize_body_gets_413_before_the_body_is_sent(service) -> None:
    svc, publisher, settings = service
    # announce 1 GiB and send none of it: the answer must come without the server waiting for the body
    head = (b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1073741824\r\n\r\n")
    answer = _raw_http(svc.port, head, b"")
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"connection: close" in status.lower()
    assert str(settings.serve_max_body_bytes).encode() in body
    assert publisher.records == []
    _good(svc.url)


def test_chunked_oversize_body_gets_413_while_streaming(service) -> None:
    svc, publisher, settings = service
    head = b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    piece = b"x" * 16 * 1024
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    over = settings.serve_max_body_bytes // len(piece) + 1  # one chunk past the limit, and no final 0-chunk:
    answer = _raw_http(svc.port, head, chunk * over)     # the body never ends, the server answers anyway
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"over the limit" in answer and answer.count(b"HTTP/1.1") == 1  # the app's own reply is not sent
    assert publisher.records == []
    _good(svc.url)


def test_body_at_the_limit_is_read(service) -> None:
    svc, _, settings = service
    body = json.dumps({**GOOD, "prompt": "p" * 100})
    body += " " * (settings.serve_max_body_bytes - len(body))  # exactly the limit: allowed
    r = httpx.post(f"{svc.url}/score", content=body, headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("payload", [
    {**GOOD, "prompt": {"nested": SECRET}},                 # wrong type
    {**GOOD, "conversation_id": SECRET * 40},               # too long
    {**GOOD, "response": f"{SECRET}\x00"},                  # NUL: the ingestor would dead-letter the record
    f'{{"prompt": "{SECRET}\\ud800", "response": "r", "conversation_id": "c"}}',  # lone surrogate: no UTF-8 form
    {"prompt": SECRET, "response": "r"},                    # missing field
    f'{{"prompt": "{SECRET}", "response": ',                # not JSON
    [SECRET],                                               # not an object
])
def test_validation_errors_never_echo_the_request(service, payload: Any) -> None:
    svc, publisher, _ = service
    content = payload if isinstance(payload, str) else json.dumps(payload)
    r = httpx.post(f"{svc.url}/score", content=content, headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == 422
    assert SECRET not in r.text and "input" not in r.text
    detail = r.json()["detail"]
    assert detail and all(set(d) == {"loc", "msg", "type"} and d["loc"][0] == "body" for d in detail)
    assert publisher.records == []
    _good(svc.url)


def test_ids_are_generated_when_absent_and_the_record_passes_the_ingestor(service) -> None:
    svc, publisher, _ = service
    first, second = _good(svc.url).json(), httpx.post(f"{svc.url}/score", json={**GOOD, "request_id": ""}).json()
    assert first["request_id"] and first["response_id"] and second["request_id"]
    assert len({first["request_id"], first["response_id"], second["request_id"], second["response_id"]}) == 4
    given = httpx.post(f"{svc.url}/score", json={**GOOD, "request_id": "mine", "response_id": "also-mine"}).json()
    assert (given["request_id"], given["response_id"]) == ("mine", "also-mine")
    assert [r.request_id for r in publisher.records] == [first["request_id"], second["request_id"], "mine"]
    for record in publisher.records:
        verdict = validate_prediction(record.to_json())
        assert type(verdict).__name__ == "Valid", verdict


def test_publish_failure_is_503_and_not_counted(service) -> None:
    svc, publisher, _ = service
    _good(svc.url)
    publisher.down.set()
    r = httpx.post(f"{svc.url}/score", json=GOOD, timeout=10)
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert "not recorded" in r.json()["error"] and r.json()["hint"]
    assert "score" not in r.json()
    stats = httpx.get(f"{svc.url}/stats").json()
    assert stats["requests"] == {"1": 1} and stats["errors"] == {}  # the refused one is not a served prediction
    assert (stats["publish_sent"], stats["publish_failed"]) == (1, 1)
    publisher.down.clear()
    _good(svc.url)
    assert httpx.get(f"{svc.url}/stats").json()["requests"] == {"1": 2}
    assert len(publisher.records) == 2


def test_record_over_the_ingestor_limit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A body under the service's limit whose record would pass max_event_bytes: 413, nothing published."""
    monkeypatch.setattr(serve.model_store, "aliases", lambda s: {"champion": "1"})
    monkeypatch.setattr(serve.model_store, "canary_share", lambda s: 0.0)
    monkeypatch.setattr(serve.model_store, "load_pyfunc", lambda s, v: _Model())
    settings: Settings = load_settings(home=tmp_path / "home", serve_port=free_port(), max_event_bytes=4096)
    publisher = FakePublisher()
    with ServiceThread(serve.create_app(settings, publisher=publisher, poll_seconds=60), settings.serve_port) as svc:
        body = json.dumps({**GOOD, "response": "é" * 2500}, ensure_ascii=False).encode()  # 5 KB: under the 1 MiB body limit
        r = httpx.post(f"{svc.url}/score", content=body, headers={"content-type": "application/json"}, timeout=10)
        assert r.status_code == 413 and "max_event_bytes" in r.json()["error"]
        assert publisher.records == [] and httpx.get(f"{svc.url}/stats").json()["requests"] == {}
        _good(svc.url)


def test_deeply_nested_body_is_refused(service) -> None:
    svc, publisher, _ = service
    body = '{"prompt": ' + "[" * 5000 + "]" * 5000 + ', "response": "r", "conversation_id": "c"}'
    r = httpx.post(f"{svc.url}/score", content=body, headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code in (400, 422), r.text  # json.loads' recursion limit: FastAPI answers 400
    assert "[[" not in r.text and publisher.records == []
    _good(svc.url)
