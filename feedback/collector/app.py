"""The collector's HTTP API (FastAPI): ``POST /v1/feedback``, ``GET /healthz``, ``GET /readyz``, and the browser
example page at ``GET /example/`` (``example``).

A request is refused as a whole before any event is looked at: 401 without a valid API key (when keys are
configured), 413 over ``collector_max_body_bytes`` (declared or streamed; the rest is never read) or over
``collector_max_batch_events`` events, 400 when the body is not one of the accepted forms. Then every event
gets a verdict (``verdicts.check_events``: the ingestor's own check, then the key's app scope), the valid
ones go to Kafka (``publisher``) and the answer comes once Kafka acknowledged them:

- 202: at least one event accepted and none left unavailable; each event ``accepted`` or ``rejected``.
- 503 + Retry-After: Kafka did not take every valid event. Either nothing was sent (Kafka known to be down),
  or, when it failed under the request, each event says ``accepted`` (acknowledged) or ``unavailable``.
  Resending the whole request is safe: silver keeps one copy per event_id.
- 422: every event rejected (403 when every one was rejected for its app_id). Rejected events are final.

No response echoes what was sent: reasons name fields, rules and limits, never values.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from feedback.collector.example import EXAMPLE_PATH, load_example_page
from infra.api_keys import ApiKeys, Caller, parse_keys, require_keys_beyond_loopback
from feedback.collector.publisher import EventPublisher, KafkaEventPublisher, KafkaUnavailable
from feedback.collector.verdicts import BodyError, Publishable, Rejected, check_events, split_body
from feedback.streams import get_stream
from infra.settings import Settings

log = logging.getLogger("lakeloop.collector")
RETRY_AFTER_S = 2
FEEDBACK_PATH = "/v1/feedback"
INLINE_BYTES = 16 * 1024


_HEADERS = {401: {"WWW-Authenticate": 'Bearer realm="lakeloop"'}, 503: {"Retry-After": str(RETRY_AFTER_S)}}


def _error(status: int, message: str, hint: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, "hint": hint, **extra}, status_code=status, headers=_HEADERS.get(status))


async def read_body(request: Request, max_bytes: int) -> bytes | None:
    """The body, or None as soon as it is over ``max_bytes`` (declared or counted): the rest is never read."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        return None
    chunks, seen = [], 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > max_bytes:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _statuses(verdicts: Sequence[Publishable | Rejected], errors: dict[int, str | None]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, v in enumerate(verdicts):
        if isinstance(v, Rejected):
            out.append({"index": i, "status": "rejected", "stage": v.stage, "reason": v.reason})
        elif errors.get(i) is None:
            out.append({"index": i, "status": "accepted", "event_id": v.event_id})
        else:
            out.append({"index": i, "status": "unavailable", "reason": errors[i]})
    return out


def create_app(settings: Settings, *, publisher: EventPublisher | None = None) -> FastAPI:
    """The collector. ConfigError when it would listen beyond loopback without API keys, or a key entry is bad.

    ``publisher``: Kafka by default (``KafkaEventPublisher``); a fake in unit tests.
    """
    keys: ApiKeys = parse_keys(settings.collector_api_keys)
    require_keys_beyond_loopback(settings.collector_bind_host, keys)
    pub: EventPublisher = publisher or KafkaEventPublisher(settings)
    stream = get_stream(settings, "feedback")
    max_body, max_events = settings.collector_max_body_bytes, settings.collector_max_batch_events

    @asynccontextmanager
    async def lifespan(_: FastAPI):  # type: ignore[no-untyped-def]
        pub.start()
        gc.collect()
        gc.freeze()  # what start-up allocated is never garbage: later collections skip it (shorter pauses)
        try:
            yield
        finally:
            pub.close()

    app = FastAPI(title="lakeloop feedback collector", lifespan=lifespan, docs_url=None, redoc_url=None)
    origins = [o.strip() for o in settings.collector_cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type"], max_age=600)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:  # a thread: the broker check opens a socket
        why = pub.unready()
        if why is not None:
            return _error(503, f"not ready: {why}", "start Kafka (`lakeloop up`) or check LAKELOOP_KAFKA_BOOTSTRAP",
                          ready=False)
        return JSONResponse({"ready": True, "topic": stream.topic})

    def judge(body: bytes, caller: Caller) -> list[Publishable | Rejected]:
        return check_events(stream, split_body(body, max_events=max_events), caller)

    async def publish(verdicts: list[Publishable | Rejected]) -> JSONResponse:
        valid = [(i, v) for i, v in enumerate(verdicts) if isinstance(v, Publishable)]
        errors: dict[int, str | None] = {}
        if valid:
            try:
                results = await pub.publish([v for _, v in valid])
            except KafkaUnavailable as exc:
                errors = {i: "Kafka is not available; nothing of this request was sent" for i, _ in valid}
                return _error(503, exc.message, exc.hint or "", **_counts(verdicts, errors),
                              events=_statuses(verdicts, errors))
            errors = {i: err for (i, _), err in zip(valid, results)}
        statuses = _statuses(verdicts, errors)
        counts = _counts(verdicts, errors)
        if counts["unavailable"]:
            log.warning("%d of %d events not acknowledged by Kafka", counts["unavailable"], len(verdicts))
            return _error(503, f"Kafka did not acknowledge {counts['unavailable']} of {len(valid)} valid events",
                          "resend the request (or the events marked unavailable) after Retry-After seconds; events "
                          "are de-duplicated by event_id", **counts, events=statuses)
        if counts["accepted"]:
            return JSONResponse({**counts, "events": statuses}, status_code=202)
        forbidden = all(isinstance(v, Rejected) and v.stage == "forbidden" for v in verdicts)
        return JSONResponse({**counts, "events": statuses}, status_code=403 if forbidden else 422)

    async def post_feedback(request: Request) -> JSONResponse:
        caller = keys.caller(request.headers.get("authorization"))
        if caller is None:
            return _error(401, "a valid API key is required", "send `Authorization: Bearer <key>`")
        body = await read_body(request, max_body)
        if body is None:
            return _error(413, f"the request body is over the limit of {max_body} bytes",
                          "send smaller batches (LAKELOOP_COLLECTOR_MAX_BODY_BYTES sets the limit)")
        try:  # a few events are judged on the event loop (~50 us each); a batch in a worker thread
            verdicts = judge(body, caller) if len(body) <= INLINE_BYTES else await run_in_threadpool(judge, body, caller)
        except BodyError as exc:
            return _error(exc.status, exc.message, exc.hint)
        return await publish(verdicts)

    page = load_example_page()

    @app.get(EXAMPLE_PATH, include_in_schema=False)
    async def example() -> Response:
        return Response(page.body, media_type="text/html; charset=utf-8", headers=page.headers)

    # a plain Starlette route: the handler reads the body itself, so FastAPI's request parsing would be pure cost
    app.add_route(FEEDBACK_PATH, post_feedback, methods=["POST"])
    return app


def _counts(verdicts: Sequence[Publishable | Rejected], errors: dict[int, str | None]) -> dict[str, int]:
    rejected = sum(isinstance(v, Rejected) for v in verdicts)
    unavailable = sum(1 for e in errors.values() if e is not None)
    return {"accepted": len(verdicts) - rejected - unavailable, "rejected": rejected, "unavailable": unavailable}


def run(settings: Settings, *, host: str | None = None, port: int | None = None) -> None:
    """Serve until interrupted (``lakeloop collector run``; ``lakeloop up`` runs it as the service `collector`)."""
    import uvicorn

    if host is not None or port is not None:
        settings = settings.model_copy(update={k: v for k, v in (("collector_host", host), ("collector_port", port))
                                               if v is not None})
    app = create_app(settings)
    uvicorn.run(app, host=settings.collector_bind_host, port=settings.collector_port, log_level="info",
                access_log=False)
