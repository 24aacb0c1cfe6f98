"""Send feedback to the collector from Python: ``FeedbackClient`` (sync) and ``AsyncFeedbackClient`` (asyncio).

    with FeedbackClient("http://127.0.0.1:8090", api_key=KEY, app_id="support-bot") as fb:
        fb.thumbs("resp-42", -1, prompt=q, response=a, user_id="u7", conversation_id="c9",
                  model_name="support-llm", model_version="3")

Every event gets its ``event_id`` (a UUID) here, when it is built, so a retry resends the same ids and never
doubles an event downstream: bronze keeps every copy that reached Kafka (a faithful log), silver keeps one per
``event_id`` (the earliest). Events are buffered and sent in batches of ``batch_size``, on ``flush()`` and on
``close()`` (or leaving the ``with`` block). A batch is retried with exponential backoff (and the server's
Retry-After) on 503, 429, 500/502/504 and connection errors; only the events not yet accepted are resent
after a 503. An event the collector rejects (it fails schema v1, or the key may not send for its app_id) is
final: it is in ``result.rejected`` and logged, never retried. When the retries run out,
``FeedbackUnavailable`` is raised and the unsent events stay buffered for the next flush.

The helpers build schema v1 events. An answer scored by ``lakeloop serve`` needs only the ``response_id`` (or
``request_id``) that the service returned: leave out prompt, response and model, and curation fills them from the
prediction record (a reference event). Otherwise pass all four. Implicit signals go through ``signal()``:

        fb.signal(resp["response_id"], "copy", user_id="u7", conversation_id="c9")  # what the user did
        fb.signal(resp["response_id"], "dwell", 12.5, user_id="u7", conversation_id="c9")  # seconds

``request_erasure(user_id)`` sends an ``erasure_request`` at once (issue 17): the autopilot erases the user.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, Required, TypedDict, Unpack

import httpx

from infra.errors import LakeloopError

log = logging.getLogger("lakeloop.client")
FEEDBACK_PATH = "/v1/feedback"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class FeedbackError(LakeloopError):
    """The collector refused a request for good (a wrong key, a malformed request)."""


class FeedbackUnavailable(FeedbackError):
    """The collector or Kafka stayed unavailable through every retry; ``events`` were not (all) delivered."""

    def __init__(self, message: str, *, events: list[dict[str, Any]], hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.events = events


@dataclass(frozen=True)
class Rejection:
    event_id: str | None
    stage: str  # decode / validate / size (the ingestor's stages) or forbidden (the key's app scope)
    reason: str


@dataclass
class SendResult:
    accepted: list[str] = field(default_factory=list)  # event ids Kafka acknowledged
    rejected: list[Rejection] = field(default_factory=list)

    def add(self, other: SendResult) -> SendResult:
        self.accepted += other.accepted
        self.rejected += other.rejected
        return self


class About(TypedDict, total=False):
    """What a feedback event is about. prompt, response, model_name, model_version: all four (a full event) or none
    (a reference event: the response_id is one that ``lakeloop serve`` returned; never for a preference)."""

    prompt: str
    response: str
    user_id: Required[str]
    conversation_id: Required[str]
    model_name: str
    model_version: str
    app_id: str  # default: the client's app_id
    comment: str
    metadata: dict[str, str]
    occurred_at: datetime | str  # default: now
    event_id: str  # default: a new UUID


def feedback_event(event_type: Literal["thumbs", "rating", "correction", "preference", "signal"], response_id: str, *,
                   app_id: str | None, about: Mapping[str, Any], **specific: Any) -> dict[str, Any]:
    """A schema v1 event (a JSON-ready dict) with a fresh event_id and occurred_at unless ``about`` has them."""
    fields = dict(about)
    app = fields.pop("app_id", None) or app_id
    if not app:
        raise ValueError("an event needs an app_id: pass app_id= to the client or to the call")
    when = fields.pop("occurred_at", None) or datetime.now(timezone.utc)
    event: dict[str, Any] = {
        "event_id": fields.pop("event_id", None) or str(uuid.uuid4()),
        "event_type": event_type,
        "occurred_at": when.isoformat() if isinstance(when, datetime) else when,
        "app_id": app,
        "response_id": response_id,
        **fields,
        **specific,
    }
    return {k: v for k, v in event.items() if v is not None}


def erasure_request_event(user_id: str, *, app_id: str | None, event_id: str | None = None,
                          occurred_at: datetime | str | None = None) -> dict[str, Any]:
    """A schema v1 ``erasure_request``: the user asks that every row of theirs be erased (issue 17)."""
    if not app_id:
        raise ValueError("an erasure request needs an app_id: pass app_id= to the client")
    when = occurred_at or datetime.now(timezone.utc)
    return {"event_id": event_id or str(uuid.uuid4()), "event_type": "erasure_request",
            "occurred_at": when.isoformat() if isinstance(when, datetime) else when, "app_id": app_id, "user_id": user_id}


# ---- what one answer of the collector means --------------------------------------------------------------
@dataclass
class _Outcome:
    done: SendResult = field(default_factory=SendResult)
    retry: list[dict[str, Any]] = field(default_factory=list)
    retry_after: float = 0.0
    why: str = ""  # of the retry
    split: bool = False  # 413 for a batch: send each half on its own
    error: FeedbackError | None = None


def _retry_after(headers: Mapping[str, str]) -> float:
    try:
        return max(0.0, float(headers.get("retry-after", "0")))
    except ValueError:
        return 0.0


def _interpret(status: int, headers: Mapping[str, str], body: bytes, pending: list[dict[str, Any]]) -> _Outcome:
    try:
        data = json.loads(body) if body else {}
    except ValueError:
        data = {}
    data = data if isinstance(data, dict) else {}
    message = str(data.get("error") or f"HTTP {status}")
    statuses = data.get("events")
    if status in (202, 403, 422, 503) and isinstance(statuses, list) and len(statuses) == len(pending):
        out = _Outcome(retry_after=_retry_after(headers), why=message)
        for event, st in zip(pending, statuses):
            kind = st.get("status") if isinstance(st, dict) else None
            if kind == "accepted":
                out.done.accepted.append(event["event_id"])
            elif kind == "rejected":
                out.done.rejected.append(Rejection(event.get("event_id"), str(st.get("stage")), str(st.get("reason"))))
            else:
                out.retry.append(event)
        return out
    if status in RETRY_STATUSES:
        return _Outcome(retry=pending, retry_after=_retry_after(headers), why=message)
    if status == 413 and len(pending) > 1:
        return _Outcome(split=True)
    if status == 413:
        return _Outcome(done=SendResult(rejected=[Rejection(pending[0].get("event_id"), "size", message)]))
    hint = data.get("hint")
    return _Outcome(error=FeedbackError(f"the collector refused the request (HTTP {status}): {message}",
                                        hint=str(hint) if hint else None))


class _Base:
    """What both clients share: the buffer, event building, backoff."""

    def __init__(self, url: str, api_key: str | None, *, app_id: str | None, batch_size: int, max_retries: int,
                 backoff_s: float, max_backoff_s: float, jitter: bool) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        url = url.rstrip("/")
        self.url = url if url.endswith(FEEDBACK_PATH) else url + FEEDBACK_PATH
        self.headers = {"content-type": "application/json"}
        if api_key:
            self.headers["authorization"] = f"Bearer {api_key}"
        self.app_id = app_id
        self.batch_size, self.max_retries = batch_size, max_retries
        self.backoff_s, self.max_backoff_s, self.jitter = backoff_s, max_backoff_s, jitter
        self.buffer: list[dict[str, Any]] = []
        self.result = SendResult()  # everything sent by this client so far

    def _event(self, event_type: Any, response_id: str, about: Mapping[str, Any], **specific: Any) -> dict[str, Any]:
        return feedback_event(event_type, response_id, app_id=self.app_id, about=about, **specific)

    def _prepared(self, events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Each event as a dict with an event_id (and the client's app_id when it has none)."""
        out = []
        for e in events:
            e = dict(e)
            e.setdefault("event_id", str(uuid.uuid4()))
            if self.app_id and "app_id" not in e:
                e["app_id"] = self.app_id
            out.append(e)
        return out

    def _delay(self, attempt: int, retry_after: float) -> float:
        delay = min(self.max_backoff_s, self.backoff_s * 2 ** attempt)
        if self.jitter:
            delay = delay / 2 + random.uniform(0, delay / 2)
        return max(delay, retry_after)

    def _chunks(self, events: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        return [events[i:i + self.batch_size] for i in range(0, len(events), self.batch_size)]

    def _record(self, result: SendResult) -> SendResult:
        for r in result.rejected:
            log.warning("feedback event %s rejected (%s): %s", r.event_id, r.stage, r.reason)
        self.result.add(result)
        return result

    def _give_up(self, pending: list[dict[str, Any]], why: str) -> FeedbackUnavailable:
        return FeedbackUnavailable(f"{len(pending)} feedback events not delivered to {self.url} after "
                                   f"{self.max_retries + 1} attempts: {why}", events=pending,
                                   hint="they stay buffered: flush() again later (their event ids do not change)")


class FeedbackClient(_Base):
    """Synchronous client (httpx). ``transport``: an httpx transport (tests use ``httpx.MockTransport``)."""

    def __init__(self, url: str, api_key: str | None = None, *, app_id: str | None = None, batch_size: int = 100,
                 max_retries: int = 5, backoff_s: float = 0.25, max_backoff_s: float = 10.0, jitter: bool = True,
                 timeout_s: float = 10.0, transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__(url, api_key, app_id=app_id, batch_size=batch_size, max_retries=max_retries,
                         backoff_s=backoff_s, max_backoff_s=max_backoff_s, jitter=jitter)
        self._http = httpx.Client(timeout=timeout_s, transport=transport)
        self._sleep = sleep

    def thumbs(self, response_id: str, value: Literal[-1, 1], **about: Unpack[About]) -> str:
        return self.add(self._event("thumbs", response_id, about, value=value))

    def rating(self, response_id: str, value: float, **about: Unpack[About]) -> str:
        return self.add(self._event("rating", response_id, about, value=value))

    def correction(self, response_id: str, corrected_response: str, **about: Unpack[About]) -> str:
        return self.add(self._event("correction", response_id, about, corrected_response=corrected_response))

    def preference(self, response_id: str, response_b: str, preferred: Literal["a", "b", "tie"],
                   **about: Unpack[About]) -> str:
        return self.add(self._event("preference", response_id, about, response_b=response_b, preferred=preferred))

    def signal(self, response_id: str, name: str, value: float = 1.0, **about: Unpack[About]) -> str:
        """An implicit signal: ``name`` copy, regenerate, dwell (``value`` in seconds), abandon, or an app's own."""
        return self.add(self._event("signal", response_id, about, name=name, value=value))

    def request_erasure(self, user_id: str) -> SendResult:
        """Ask that every row of ``user_id`` be erased (sent now, past the buffer; the autopilot's erasure job runs it)."""
        return self.send([erasure_request_event(user_id, app_id=self.app_id)])

    def add(self, event: Mapping[str, Any]) -> str:
        """Buffer one event (sent once ``batch_size`` are buffered); returns its event_id."""
        (prepared,) = self._prepared([event])
        self.buffer.append(prepared)
        if len(self.buffer) >= self.batch_size:
            self.flush()
        return prepared["event_id"]

    def send(self, events: Iterable[Mapping[str, Any]]) -> SendResult:
        """Send ``events`` now (in batches of ``batch_size``), past the buffer; FeedbackUnavailable if retries run out."""
        result = SendResult()
        for chunk in self._chunks(self._prepared(events)):
            result.add(self._record(self._post(chunk)))
        return result

    def flush(self) -> SendResult:
        """Send the buffered events; on FeedbackUnavailable the unsent ones stay buffered."""
        pending, self.buffer = self.buffer, []
        result = SendResult()
        for n, chunk in enumerate(self._chunks(pending)):
            try:
                result.add(self._record(self._post(chunk)))
            except FeedbackUnavailable as exc:
                rest = [e for later in self._chunks(pending)[n + 1:] for e in later]
                self.buffer = exc.events + rest + self.buffer
                raise
        return result

    def _post(self, events: list[dict[str, Any]]) -> SendResult:
        result, pending, attempt = SendResult(), events, 0
        while True:
            try:
                r = self._http.post(self.url, content=json.dumps(pending).encode(), headers=self.headers)
                outcome = _interpret(r.status_code, r.headers, r.content, pending)
            except httpx.TransportError as exc:
                outcome = _Outcome(retry=pending, why=f"{type(exc).__name__}: {exc}")
            if outcome.error is not None:
                raise outcome.error
            result.add(outcome.done)
            if outcome.split:
                half = len(pending) // 2
                return result.add(self._post(pending[:half])).add(self._post(pending[half:]))
            pending = outcome.retry
            if not pending:
                return result
            if attempt >= self.max_retries:
                raise self._give_up(pending, outcome.why)
            self._sleep(self._delay(attempt, outcome.retry_after))
            attempt += 1

    def close(self) -> None:
        """Flush, then close the connection pool (closed even when the flush raises)."""
        try:
            self.flush()
        finally:
            self._http.close()

    def __enter__(self) -> FeedbackClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncFeedbackClient(_Base):
    """The same client for asyncio (httpx.AsyncClient): every method that may send is a coroutine."""

    def __init__(self, url: str, api_key: str | None = None, *, app_id: str | None = None, batch_size: int = 100,
                 max_retries: int = 5, backoff_s: float = 0.25, max_backoff_s: float = 10.0, jitter: bool = True,
                 timeout_s: float = 10.0, transport: httpx.AsyncBaseTransport | None = None,
                 sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        super().__init__(url, api_key, app_id=app_id, batch_size=batch_size, max_retries=max_retries,
                         backoff_s=backoff_s, max_backoff_s=max_backoff_s, jitter=jitter)
        self._http = httpx.AsyncClient(timeout=timeout_s, transport=transport)
        self._sleep = sleep
        self._lock = asyncio.Lock()  # one flush at a time: the buffer is shared by every task

    async def thumbs(self, response_id: str, value: Literal[-1, 1], **about: Unpack[About]) -> str:
        return await self.add(self._event("thumbs", response_id, about, value=value))

    async def rating(self, response_id: str, value: float, **about: Unpack[About]) -> str:
        return await self.add(self._event("rating", response_id, about, value=value))

    async def correction(self, response_id: str, corrected_response: str, **about: Unpack[About]) -> str:
        return await self.add(self._event("correction", response_id, about, corrected_response=corrected_response))

    async def preference(self, response_id: str, response_b: str, preferred: Literal["a", "b", "tie"],
                         **about: Unpack[About]) -> str:
        return await self.add(self._event("preference", response_id, about, response_b=response_b, preferred=preferred))

    async def signal(self, response_id: str, name: str, value: float = 1.0, **about: Unpack[About]) -> str:
        """An implicit signal: ``name`` copy, regenerate, dwell (``value`` in seconds), abandon, or an app's own."""
        return await self.add(self._event("signal", response_id, about, name=name, value=value))

    async def request_erasure(self, user_id: str) -> SendResult:
        """``FeedbackClient.request_erasure``."""
        return await self.send([erasure_request_event(user_id, app_id=self.app_id)])

    async def add(self, event: Mapping[str, Any]) -> str:
        (prepared,) = self._prepared([event])
        self.buffer.append(prepared)
        if len(self.buffer) >= self.batch_size:
            await self.flush()
        return prepared["event_id"]

    async def send(self, events: Iterable[Mapping[str, Any]]) -> SendResult:
        result = SendResult()
        for chunk in self._chunks(self._prepared(events)):
            result.add(self._record(await self._post(chunk)))
        return result

    async def flush(self) -> SendResult:
        async with self._lock:
            pending, self.buffer = self.buffer, []
            result = SendResult()
            for n, chunk in enumerate(self._chunks(pending)):
                try:
                    result.add(self._record(await self._post(chunk)))
                except FeedbackUnavailable as exc:
                    rest = [e for later in self._chunks(pending)[n + 1:] for e in later]
                    self.buffer = exc.events + rest + self.buffer
                    raise
            return result

    async def _post(self, events: list[dict[str, Any]]) -> SendResult:
        result, pending, attempt = SendResult(), events, 0
        while True:
            try:
                r = await self._http.post(self.url, content=json.dumps(pending).encode(), headers=self.headers)
                outcome = _interpret(r.status_code, r.headers, r.content, pending)
            except httpx.TransportError as exc:
                outcome = _Outcome(retry=pending, why=f"{type(exc).__name__}: {exc}")
            if outcome.error is not None:
                raise outcome.error
            result.add(outcome.done)
            if outcome.split:
                half = len(pending) // 2
                return result.add(await self._post(pending[:half])).add(await self._post(pending[half:]))
            pending = outcome.retry
            if not pending:
                return result
            if attempt >= self.max_retries:
                raise self._give_up(pending, outcome.why)
            await self._sleep(self._delay(attempt, outcome.retry_after))
            attempt += 1

    async def aclose(self) -> None:
        try:
            await self.flush()
        finally:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncFeedbackClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
