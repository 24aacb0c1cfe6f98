"""The Python client without a collector (httpx.MockTransport plays it): events it builds are valid v1 events,
batching, retries with backoff that resend the same event ids, and what is final (rejections, a wrong key).
Against the real collector and broker: tests/test_collector.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from feedback.client import AsyncFeedbackClient, FeedbackClient, FeedbackError, FeedbackUnavailable, Rejection
from feedback.events import validate_event
from feedback.validation import Valid

ABOUT = {"prompt": "Who wrote Bloom?", "response": "Troye Sivan.", "user_id": "u1", "conversation_id": "c1",
         "model_name": "support-llm", "model_version": "3"}
URL = "http://collector.test"


class Collector:
    """A scripted collector: each request gets the next answer (a function of the events it carries)."""

    def __init__(self, *answers: Callable[[list[dict]], httpx.Response | Exception]) -> None:
        self.answers = list(answers)
        self.requests: list[list[dict]] = []
        self.headers: list[httpx.Headers] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        events = json.loads(request.content)
        self.requests.append(events)
        self.headers.append(request.headers)
        answer = (self.answers.pop(0) if self.answers else accept)(events)
        if isinstance(answer, Exception):
            raise answer
        return answer


def accept(events: list[dict]) -> httpx.Response:
    return httpx.Response(202, json={"events": [{"index": i, "status": "accepted", "event_id": e["event_id"]}
                                                for i, e in enumerate(events)]})


def unavailable(*, keep: set[int] = frozenset(), retry_after: str = "0") -> Callable[[list[dict]], httpx.Response]:
    """503: the events at ``keep`` were acknowledged, the others not."""
    def answer(events: list[dict]) -> httpx.Response:
        return httpx.Response(503, headers={"Retry-After": retry_after}, json={
            "error": "Kafka did not acknowledge", "events": [
                {"index": i, "status": "accepted" if i in keep else "unavailable"} for i in range(len(events))]})
    return answer


def refused(status: int) -> Callable[[list[dict]], httpx.Response]:
    return lambda events: httpx.Response(status, json={"error": f"refused {status}", "hint": "do something"})


def client(collector: Collector, sleeps: list[float] | None = None, **kw: Any) -> FeedbackClient:
    sleeps = [] if sleeps is None else sleeps
    return FeedbackClient(URL, "llk_test", app_id="support-bot", transport=httpx.MockTransport(collector),
                          sleep=sleeps.append, jitter=False, backoff_s=0.5, **kw)


# ---- events --------------------------------------------------------------------------------------------------
def test_the_helpers_build_valid_v1_events_with_fresh_ids() -> None:
    c = Collector()
    with client(c, batch_size=10) as fb:
        ids = [fb.thumbs("r1", -1, **ABOUT), fb.rating("r1", 4.5, **ABOUT, comment="good"),
               fb.correction("r1", "Troye Sivan wrote it.", **ABOUT),
               fb.preference("r1", "A singer.", "a", **ABOUT, metadata={"surface": "web"}, app_id="other-app")]
    (sent,) = c.requests
    assert [e["event_id"] for e in sent] == ids and len(set(ids)) == 4
    assert [e["event_type"] for e in sent] == ["thumbs", "rating", "correction", "preference"]
    assert [e["app_id"] for e in sent] == ["support-bot"] * 3 + ["other-app"]
    for event in sent:
        assert isinstance(validate_event(event), Valid), event
    assert c.headers[0]["authorization"] == "Bearer llk_test"
    assert fb.result.accepted == ids


def test_an_erasure_request_is_sent_at_once_as_a_valid_v1_event() -> None:
    """Issue 17: an app asks that a user be erased; the request goes now, past the buffer."""
    c = Collector()
    fb = client(c, batch_size=10)
    fb.thumbs("r1", 1, **ABOUT)
    result = fb.request_erasure("u7")
    [[sent]] = c.requests
    assert sent["event_type"] == "erasure_request" and sent["user_id"] == "u7" and sent["app_id"] == "support-bot"
    assert isinstance(validate_event(sent), Valid) and result.accepted == [sent["event_id"]] and len(fb.buffer) == 1
    with pytest.raises(ValueError, match="app_id"):
        FeedbackClient(URL, transport=httpx.MockTransport(Collector())).request_erasure("u7")


def test_an_event_needs_an_app_id() -> None:
    fb = FeedbackClient(URL, transport=httpx.MockTransport(Collector()))
    with pytest.raises(ValueError, match="app_id"):
        fb.thumbs("r1", 1, **ABOUT)


# ---- batching ------------------------------------------------------------------------------------------------
def test_events_go_in_batches_of_batch_size_and_the_rest_on_close() -> None:
    c = Collector()
    fb = client(c, batch_size=3)
    ids = [fb.thumbs(f"r{i}", 1, **ABOUT) for i in range(7)]
    assert [len(r) for r in c.requests] == [3, 3] and len(fb.buffer) == 1
    fb.close()
    assert [len(r) for r in c.requests] == [3, 3, 1]
    assert [e["event_id"] for r in c.requests for e in r] == ids == fb.result.accepted


def test_send_goes_past_the_buffer_in_chunks() -> None:
    c = Collector()
    with client(c, batch_size=2) as fb:
        result = fb.send([{"event_type": "thumbs", "value": 1, "response_id": "r", "occurred_at": "x", **ABOUT}] * 5)
    assert [len(r) for r in c.requests] == [2, 2, 1]
    assert len(set(result.accepted)) == 5 and all(e["app_id"] == "support-bot" for r in c.requests for e in r)


# ---- retries -------------------------------------------------------------------------------------------------
def test_a_503_resends_only_the_unacknowledged_events_with_the_same_ids_and_backs_off() -> None:
    c = Collector(unavailable(keep={0}), unavailable(retry_after="3"), accept)
    sleeps: list[float] = []
    with client(c, sleeps, batch_size=3) as fb:
        ids = [fb.thumbs(f"r{i}", 1, **ABOUT) for i in range(3)]
    assert [[e["event_id"] for e in r] for r in c.requests] == [ids, ids[1:], ids[1:]]
    assert sleeps == [0.5, 3.0]  # backoff 0.5 s, then the server's Retry-After (3 s) over the backoff (1 s)
    assert sorted(fb.result.accepted) == sorted(ids)


def test_connection_errors_and_5xx_are_retried_with_doubling_delays() -> None:
    c = Collector(lambda e: httpx.ConnectError("refused"), refused(502), lambda e: httpx.ReadTimeout("slow"), accept)
    sleeps: list[float] = []
    with client(c, sleeps, batch_size=2) as fb:
        ids = [fb.thumbs("r1", 1, **ABOUT), fb.thumbs("r2", -1, **ABOUT)]
    assert all([e["event_id"] for e in r] == ids for r in c.requests) and len(c.requests) == 4
    assert sleeps == [0.5, 1.0, 2.0]


def test_when_retries_run_out_the_events_stay_buffered_with_their_ids() -> None:
    c = Collector(*[unavailable()] * 3)
    sleeps: list[float] = []
    fb = client(c, sleeps, batch_size=10, max_retries=2, max_backoff_s=0.75)
    ids = [fb.thumbs(f"r{i}", 1, **ABOUT) for i in range(2)]
    with pytest.raises(FeedbackUnavailable, match="2 feedback events not delivered") as exc:
        fb.flush()
    assert [e["event_id"] for e in exc.value.events] == ids
    assert [e["event_id"] for e in fb.buffer] == ids and sleeps == [0.5, 0.75]
    fb.close()  # the collector is back: the same ids go out once more
    assert [e["event_id"] for e in c.requests[-1]] == ids and fb.result.accepted == ids


def test_jitter_keeps_delays_between_half_and_the_full_backoff() -> None:
    fb = FeedbackClient(URL, backoff_s=1.0, max_backoff_s=8.0, transport=httpx.MockTransport(Collector()))
    for attempt, full in [(0, 1.0), (1, 2.0), (2, 4.0), (5, 8.0)]:
        delays = [fb._delay(attempt, 0.0) for _ in range(50)]
        assert all(full / 2 <= d <= full for d in delays) and len(set(delays)) > 1


# ---- final answers -------------------------------------------------------------------------------------------
def test_rejected_events_are_reported_and_never_retried() -> None:
    def mixed(events: list[dict]) -> httpx.Response:
        return httpx.Response(202, json={"events": [
            {"index": 0, "status": "accepted", "event_id": events[0]["event_id"]},
            {"index": 1, "status": "rejected", "stage": "validate", "reason": "value: Input should be -1 or 1"}]})

    c = Collector(mixed)
    with client(c, batch_size=2) as fb:
        good = fb.thumbs("r1", 1, **ABOUT)
        bad = fb.add({"event_type": "thumbs", "value": 7, "response_id": "r2", **ABOUT})
    assert len(c.requests) == 1
    assert fb.result.accepted == [good]
    assert fb.result.rejected == [Rejection(bad, "validate", "value: Input should be -1 or 1")]


@pytest.mark.parametrize("status", [401, 400])
def test_a_refused_request_raises_at_once(status: int) -> None:
    c = Collector(refused(status))
    fb = client(c, batch_size=1)
    with pytest.raises(FeedbackError, match=f"HTTP {status}") as exc:
        fb.thumbs("r1", 1, **ABOUT)
    assert not isinstance(exc.value, FeedbackUnavailable) and exc.value.hint == "do something"
    assert len(c.requests) == 1


def test_a_batch_over_the_body_limit_is_split_in_halves() -> None:
    c = Collector(refused(413), refused(413), accept, accept, accept)
    with client(c, batch_size=4) as fb:
        ids = [fb.thumbs(f"r{i}", 1, **ABOUT) for i in range(4)]
    assert [len(r) for r in c.requests] == [4, 2, 1, 1, 2]
    assert sorted(fb.result.accepted) == sorted(ids)


# ---- the async flavour -----------------------------------------------------------------------------------------
def test_the_async_client_batches_and_retries_the_same_ids() -> None:
    c = Collector(lambda e: httpx.ConnectError("refused"), unavailable(keep={1}), accept)
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def app() -> tuple[list[str], AsyncFeedbackClient]:
        async with AsyncFeedbackClient(URL, app_id="support-bot", batch_size=3, jitter=False, backoff_s=0.5,
                                       transport=httpx.MockTransport(c), sleep=fake_sleep) as fb:
            ids = [await fb.thumbs(f"r{i}", 1, **ABOUT) for i in range(3)]
            ids.append(await fb.rating("r9", 2, **ABOUT))
        return ids, fb

    ids, fb = asyncio.run(app())
    assert [[e["event_id"] for e in r] for r in c.requests] == [ids[:3], ids[:3], [ids[0], ids[2]], ids[3:]]
    assert sleeps == [0.5, 1.0]
    assert sorted(fb.result.accepted) == sorted(ids)


def test_signals_and_reference_events_are_valid_v1_events_sync_and_async() -> None:
    who = {"user_id": "u7", "conversation_id": "c9"}
    c = Collector()
    with client(c, batch_size=10) as fb:
        ids = [fb.signal("r1", "copy", **who), fb.signal("r1", "dwell", 12.5, **ABOUT), fb.thumbs("req-1", 1, **who)]

    async def app() -> list[str]:
        async with AsyncFeedbackClient(URL, app_id="support-bot", transport=httpx.MockTransport(c)) as afb:
            return [await afb.signal("r2", "regenerate", **who), await afb.rating("r2", 4, **who)]

    ids += asyncio.run(app())
    sent = [e for r in c.requests for e in r]
    assert [e["event_id"] for e in sent] == ids
    assert [(e["event_type"], e.get("name"), e["value"]) for e in sent] == [
        ("signal", "copy", 1.0), ("signal", "dwell", 12.5), ("thumbs", None, 1), ("signal", "regenerate", 1.0),
        ("rating", None, 4)]
    assert "prompt" not in sent[0] and sent[1]["prompt"] == ABOUT["prompt"]  # reference and full
    for event in sent:
        result = validate_event(event)
        assert isinstance(result, Valid), event
        assert result.model.is_reference is ("prompt" not in event)
