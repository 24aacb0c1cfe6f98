"""The feedback collector against the real broker, over loopback HTTP: what it accepts lands in bronze through the
real ingestor, what it refuses never reaches Kafka, keys and scopes hold, a stopped broker is a 503 and then
accepted after its restart, a retried batch is one row per event in silver, and `lakeloop up` runs it."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import httpx
import pytest
import uvicorn
from deltalake import DeltaTable

from feedback.client import FeedbackClient
from feedback.collector.app import create_app
from infra.api_keys import key_entry
from feedback.ingestor import Ingestor
from feedback.kafka_io import end_offsets
from feedback.streams import get_stream
from infra import services
from infra.settings import Settings
from infra.tables import table_uri
from tests.conftest import Platform, free_port
from tests.test_feedback_corpus import dumps, valid_event

pytestmark = pytest.mark.integration

DAY = date(2026, 1, 5)
MARK = "Zq8marker"


def event(i: int, **kw: object) -> dict:
    return valid_event(i, **{"event_id": f"col-{i:05d}", "occurred_at": "2026-01-05T10:00:00Z", **kw})


def local(kafka: Settings, tmp_path: Path, **overrides: object) -> Settings:
    """The session's broker with this test's own topic, lake and collector port."""
    return kafka.model_copy(update={"lake_root": str(tmp_path / "lake"), "feedback_topic": f"col-{uuid.uuid4().hex[:8]}",
                                    "collector_port": free_port(), **overrides})


@contextmanager
def collector(settings: Settings) -> Iterator[str]:
    """The collector app under uvicorn on loopback (a thread of this process); its URL once /readyz says ready."""
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host=settings.collector_bind_host,
                                           port=settings.collector_port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="collector", daemon=True)
    thread.start()
    url = settings.collector_url
    try:
        wait_for("the collector to be ready", lambda: server.started and httpx.get(f"{url}/readyz").status_code == 200)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def wait_for(what: str, condition, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.1)


def post(url: str, body: object, *, key: str | None = None, raw: bytes | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    content = raw if raw is not None else json.dumps(body).encode()
    return httpx.post(f"{url}/v1/feedback", content=content, headers={"content-type": "application/json", **headers},
                      timeout=30)


def ingest(s: Settings) -> None:
    Ingestor(s, get_stream(s, "feedback"), group=f"g-{uuid.uuid4().hex[:6]}", say=print).run(once=True)


def bronze(s: Settings, table: str = "bronze/feedback_events", columns: tuple[str, ...] = ("event_id", "raw")) -> list[dict]:
    uri = table_uri(s, table)
    return DeltaTable(uri).to_pyarrow_table(columns=list(columns)).to_pylist() if DeltaTable.is_deltatable(uri) else []


def records_in_topic(s: Settings) -> int:
    return sum(end_offsets(s, s.feedback_topic).values())


def accepted(r: httpx.Response) -> list[str]:
    return [e["event_id"] for e in r.json()["events"] if e["status"] == "accepted"]


# ---------------------------------------------------------------------------------------------
def test_single_batches_and_mixed_land_in_bronze_exactly_as_sent(kafka: Settings, tmp_path: Path) -> None:
    s = local(kafka, tmp_path)
    bad = [event(90, value=7), {"event_type": "thumbs"}, event(91, occurred_at="2999-01-01T00:00:00Z"),
           event(92, user_id=MARK * 40)]
    with collector(s) as url:
        single = post(url, None, raw=dumps(event(1)))
        assert single.status_code == 202, single.text
        assert single.json() == {"accepted": 1, "rejected": 0, "unavailable": 0,
                                 "events": [{"index": 0, "status": "accepted", "event_id": "col-00001"}]}
        array = post(url, [event(i) for i in range(2, 12)])
        wrapped = post(url, {"events": [event(i) for i in range(12, 15)]})
        mixed = post(url, [event(20), *bad, event(21)])
        with FeedbackClient(url, app_id="test-app", batch_size=4) as fb:  # the Python client, three requests
            by_client = [fb.thumbs(f"resp-{i}", 1, prompt="q?", response="a.", user_id="u", conversation_id="c",
                                   model_name="m", model_version="1") for i in range(10)]
    assert (array.status_code, wrapped.status_code, mixed.status_code) == (202, 202, 202)
    assert [e["status"] for e in mixed.json()["events"]] == ["accepted"] + ["rejected"] * 4 + ["accepted"]
    reasons = [e["reason"] for e in mixed.json()["events"] if e["status"] == "rejected"]
    assert reasons[0] == "value: Input should be -1 or 1" and "occurred_at is more than 24 h" in reasons[2]
    assert MARK not in mixed.text  # nothing sent is echoed
    assert fb.result.accepted == by_client and fb.result.rejected == []

    ingest(s)
    rows = bronze(s)
    expected = ["col-00001", *(f"col-{i:05d}" for i in range(2, 15)), "col-00020", "col-00021", *by_client]
    assert sorted(r["event_id"] for r in rows) == sorted(expected)  # each once; the rejected never reached Kafka
    assert bronze(s, "bronze/dead_letters", ("stage",)) == []
    raw = {r["event_id"]: r["raw"] for r in rows}
    assert raw["col-00001"] == dumps(event(1)).decode() and raw["col-00005"] == json.dumps(event(5))  # byte for byte


def test_limits_refuse_the_whole_request_and_send_nothing(kafka: Settings, tmp_path: Path) -> None:
    s = local(kafka, tmp_path, collector_max_body_bytes=64 * 1024, collector_max_batch_events=5)
    with collector(s) as url:
        declared = post(url, None, raw=b"[" + b" " * 70_000 + b"]")
        streamed = httpx.post(f"{url}/v1/feedback", content=iter([dumps(event(1))] + [b" " * 8192] * 20), timeout=30)
        too_many = post(url, [event(i) for i in range(6)])
        not_json = post(url, None, raw=b"[" + dumps(event(1)) + b", NaN]")
        empty = post(url, [])
        five = post(url, [event(i) for i in range(5)])  # at the limits: fine
    for r in (declared, streamed, too_many):
        assert r.status_code == 413, r.text
    assert "65536 bytes" in declared.json()["error"] and "LAKELOOP_COLLECTOR_MAX_BODY_BYTES" in declared.json()["hint"]
    assert "6 events, over the limit of 5" in too_many.json()["error"]
    assert (not_json.status_code, empty.status_code, five.status_code) == (400, 400, 202)
    assert records_in_topic(s) == 5


def test_api_keys_and_app_scopes(kafka: Settings, tmp_path: Path) -> None:
    web, anyapp = f"llk_web_{uuid.uuid4().hex}", f"llk_any_{uuid.uuid4().hex}"
    s = local(kafka, tmp_path, collector_api_keys=f"{key_entry(web, 'web')}, {key_entry(anyapp)}")
    with collector(s) as url:
        no_key = post(url, [event(1, app_id="web")])
        wrong = post(url, [event(1, app_id="web")], key=f"llk_{MARK}")
        other = post(url, [event(2, app_id="mobile"), event(3, app_id="mobile")], key=web)
        mixed = post(url, [event(4, app_id="web"), event(5, app_id="mobile")], key=web)
        unscoped = post(url, [event(6, app_id="mobile")], key=anyapp)
    for r in (no_key, wrong):
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert MARK not in r.text
    assert other.status_code == 403
    assert {e["stage"] for e in other.json()["events"]} == {"forbidden"}
    assert mixed.status_code == 202 and [e["status"] for e in mixed.json()["events"]] == ["accepted", "rejected"]
    assert unscoped.status_code == 202
    assert records_in_topic(s) == 2  # col-4 and col-6 only


def test_a_retried_batch_is_one_row_per_event_in_silver(kafka: Settings, tmp_path: Path) -> None:
    from features import pipeline_local
    from features.config import CurationConfig

    s = local(kafka, tmp_path)
    batch = [event(i, conversation_id=f"conv-{i}", prompt=f"question number {i} about the album?",
                   response=f"The album came out in {2000 + i}, on a Friday.") for i in range(8)]
    with collector(s) as url:
        first = post(url, batch)
        again = post(url, batch)  # the app never saw the first answer and sends the same events again
    assert first.status_code == again.status_code == 202
    assert accepted(first) == accepted(again) == [e["event_id"] for e in batch]

    ingest(s)
    assert Counter(r["event_id"] for r in bronze(s)) == {e["event_id"]: 2 for e in batch}  # bronze: a faithful log
    report = pipeline_local.curate_silver(s, DAY, cfg=CurationConfig(), key=b"collector-test-key")
    silver = DeltaTable(table_uri(s, "silver/feedback")).to_pyarrow_table(columns=["event_id"]).to_pylist()
    assert sorted(r["event_id"] for r in silver) == sorted(e["event_id"] for e in batch)
    assert report.drops["duplicate_event_id"] == len(batch)


# ---- the broker stopped and restarted ---------------------------------------------------------------------------
@pytest.fixture()
def own_kafka(tmp_path: Path) -> Iterator[Settings]:
    """A broker of this test alone (it is killed): its own home and ports."""
    platform = Platform(tmp_path / "home")
    try:
        yield platform.ensure("kafka")
    finally:
        platform.stop()


@pytest.mark.slow
def test_kafka_stopped_is_503_with_retry_after_then_accepted_after_its_restart(own_kafka: Settings, tmp_path: Path) -> None:
    s = local(own_kafka, tmp_path, collector_publish_timeout_s=1.0)
    host, port = s.bootstrap_servers.rsplit(":", 1)
    with collector(s) as url:
        before = post(url, [event(1)])
        assert before.status_code == 202

        pid = json.loads((s.run_dir / "kafka.pid").read_text())["pid"]
        os.killpg(pid, signal.SIGKILL)
        wait_for("the broker's port to close", lambda: not services.port_in_use(host, int(port)), timeout=30)
        down = post(url, [event(2), event(3, value=7)])
        assert down.status_code == 503 and int(down.headers["retry-after"]) >= 1, down.text
        assert [e["status"] for e in down.json()["events"]] == ["unavailable", "rejected"]
        assert down.json()["accepted"] == 0
        wait_for("/readyz to say not ready", lambda: httpx.get(f"{url}/readyz").status_code == 503, timeout=10)

        # an app keeps sending through the outage: its client retries with backoff while the broker restarts
        outcome: dict = {}
        batch = [event(i) for i in range(10, 30)]

        def app() -> None:
            with FeedbackClient(url, batch_size=50, max_retries=200, backoff_s=0.2, max_backoff_s=1.0) as fb:
                outcome["result"] = fb.send([event(2), *batch])

        sender = threading.Thread(target=app)
        sender.start()
        time.sleep(2.0)
        assert sender.is_alive(), "the client gave up while the broker was down"
        services.up(s, log=print, only=["kafka"])  # same data dir: a restart, not a new cluster
        sender.join(timeout=120)
        assert not sender.is_alive()
        assert sorted(outcome["result"].accepted) == sorted(e["event_id"] for e in [event(2), *batch])
        assert httpx.get(f"{url}/readyz").status_code == 200

    ingest(s)
    assert Counter(r["event_id"] for r in bronze(s)) == {e["event_id"]: 1 for e in [event(1), event(2), *batch]}


# ---- a service of `lakeloop up` ------------------------------------------------------------------------------
def test_the_collector_is_a_service_of_lakeloop_up(platform: Platform, kafka: Settings) -> None:
    s = platform.ensure("collector")
    rows = {r.name: r for r in services.status(s)}
    assert rows["collector"].healthy and rows["collector"].running, rows["collector"]
    assert rows["collector"].address == f"{s.collector_url}/v1/feedback"
    assert httpx.get(f"{s.collector_url}/healthz").json() == {"status": "ok"}
    r = post(s.collector_url, [event(1, value=3)])  # judged by the service, nothing published to the shared topic
    assert r.status_code == 422 and r.json()["events"][0]["reason"] == "value: Input should be -1 or 1"
    services.down(s, log=print, only=["collector"])
    assert not services.port_in_use("127.0.0.1", s.collector_port)
    platform.started.discard("collector")
