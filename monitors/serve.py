"""The scoring service: FastAPI app scoring (prompt, response) with the `champion` and a sticky `canary`.

Models are loaded from our MLflow registry by alias (never from request input). A poller re-reads the
aliases and the canary share every ``poll_seconds`` and swaps in new versions after loading them, so
requests keep being answered with the previous pair meanwhile. Every prediction goes to Kafka, and a score
is returned only once Kafka has it: a publish failure is a 503 and is not counted as served.

Refused without harm (``monitors.serve_limits``): a body over ``serve_max_body_bytes`` (413, the rest is
never read), a request that does not fit ``ScoreRequest`` (422 with field locations and messages, never the
values sent), a prediction record over ``max_event_bytes`` (413: the ingestor would dead-letter it).

API keys (``serve_api_keys``, hashes as the collector's, ``infra.api_keys``): with keys configured, /score and /stats
answer 401 without a valid ``Authorization: Bearer <key>``, and a key scoped to apps (``@app_id``) scores only
requests whose ``app_id`` is one of them (403). /healthz and /readyz stay open for health checks. ``run`` refuses to
listen beyond loopback without keys.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, field_validator

from infra.api_keys import Caller, parse_keys
from infra.settings import Settings
from monitors import model_store
from monitors.predictions import PredictionRecord, PublishError, rfc3339_now
from monitors.routing import route
from monitors.serve_limits import BodyLimit, invalid_request
from trainers.model_trust import UntrustedModelError

log = logging.getLogger("lakeloop.serve")


class Publisher(Protocol):
    def publish(self, record: PredictionRecord) -> None:
        """Return once Kafka has ``record``; raise ``PublishError`` when it did not take it."""
        ...


@dataclass(frozen=True)
class Loaded:
    version: str
    model: Any


@dataclass(frozen=True)
class Serving:
    """An immutable snapshot of what serves; swapped atomically by the poller."""

    champion: Loaded | None = None
    canary: Loaded | None = None
    canary_share: float = 0.0


@dataclass
class Counters:
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def count(self, version: str, *, error: bool) -> None:
        with self.lock:
            self.requests[version] += 1
            if error:
                self.errors[version] += 1


class ScoreRequest(BaseModel):
    prompt: str = Field(min_length=1, max_length=200_000)
    response: str = Field(min_length=1, max_length=200_000)
    conversation_id: str = Field(min_length=1, max_length=256)
    request_id: str | None = Field(None, max_length=256)  # generated when absent or empty
    response_id: str | None = Field(None, max_length=256)
    app_id: str | None = Field(None, max_length=256)  # required by a key scoped to apps (serve_api_keys `@app_id`)

    @field_validator("prompt", "response", "conversation_id", "request_id", "response_id", "app_id")
    @classmethod
    def _publishable(cls, v: str | None) -> str | None:
        """Text the prediction record can carry: the ingestor dead-letters U+0000, and a lone surrogate
        (JSON ``"\\ud800"``) has no UTF-8 form at all."""
        if v is None:
            return v
        if "\x00" in v:
            raise ValueError("must not contain the NUL character (U+0000)")
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("must be valid Unicode text (a lone surrogate code point is not)") from None
        return v


class ScoreResponse(BaseModel):
    request_id: str
    response_id: str
    score: float
    model_version: str
    alias: str
    latency_ms: float


def predict_scores(model: Any, texts: pd.DataFrame) -> np.ndarray:
    """The model contract: predict(DataFrame[prompt, response]) -> column `score` in [0, 1], one per row."""
    out = model.predict(texts[["prompt", "response"]].reset_index(drop=True))
    scores = np.asarray(out["score"] if isinstance(out, pd.DataFrame) else out, dtype=float).reshape(-1)
    if len(scores) != len(texts):
        raise ValueError(f"model returned {len(scores)} scores for {len(texts)} rows")
    bad = scores[~((scores >= 0.0) & (scores <= 1.0))]
    if len(bad):
        raise ValueError(f"model returned score {bad[0]} outside [0, 1]")
    return scores


def predict_score(model: Any, prompt: str, response: str) -> float:
    """``predict_scores`` for one (prompt, response)."""
    return float(predict_scores(model, pd.DataFrame({"prompt": [prompt], "response": [response]}))[0])


def _warm_up(model: Any, version: str, *, calls: int = 3) -> None:
    """A few predictions before a version takes traffic, so its first requests do not carry one-off costs
    (lazy init, first allocations) into the latency the canary analysis compares. A failure is only logged:
    the version's real requests count it as an error."""
    try:
        for _ in range(calls):
            predict_score(model, "warm-up request", "warm-up response")
    except Exception as exc:  # noqa: BLE001 - any model error; its real requests count it
        log.warning("warm-up of version %s failed: %s", version, exc)


class ModelPool:
    """Keeps the serving snapshot in step with the registry."""

    def __init__(self, settings: Settings, *, notify: Callable[[Any], Any] | None = None, retry_refused_s: float = 300.0) -> None:
        self.settings = settings
        self.serving = Serving()
        self.cache: dict[str, Any] = {}
        self.last_refresh: float | None = None
        self.last_error: str | None = None
        self.notify = notify  # None: the settings' notifier (monitors.alerts), made on the first refusal
        self.refused: dict[str, tuple[float, Exception]] = {}  # version -> (when, why): not downloaded again before retry_refused_s
        self.retry_refused_s = retry_refused_s

    def _load(self, version: str | None) -> Loaded | None:
        if version is None:
            return None
        if version not in self.cache:
            when, why = self.refused.get(version, (None, None))
            if when is not None and why is not None and time.time() - when < self.retry_refused_s:
                raise why
            log.info("loading %s version %s", self.settings.registered_model_name, version)
            try:
                model = model_store.load_pyfunc(self.settings, version)
            except UntrustedModelError as exc:
                self.refused[version] = (time.time(), exc)
                self._alert_untrusted(exc)
                raise
            self.refused.pop(version, None)
            _warm_up(model, version)
            self.cache[version] = model
        return Loaded(version, self.cache[version])

    def _alert_untrusted(self, exc: UntrustedModelError) -> None:
        """Say why a version was refused (the service keeps serving what it had); an alert that fails is only logged."""
        from monitors.alerts import Alert, notifier_from_settings

        log.error("refused to load %s v%s: %s", self.settings.registered_model_name, exc.version, exc.message)
        alert = Alert("untrusted_model", f"{self.settings.registered_model_name} v{exc.version} refused ({exc.reason}); still serving "
                      f"v{self.serving.champion.version if self.serving.champion else 'none'}", severity="critical",
                      details={"version": exc.version, "reason": exc.reason, "error": exc.message, "hint": exc.hint or ""},
                      dedup_key=f"untrusted_model:{exc.version}:{exc.reason}")
        try:
            (self.notify or notifier_from_settings(self.settings).notify)(alert)
        except Exception as err:  # noqa: BLE001 - a failed alert must not stop the poller; the refusal stays on /readyz
            log.warning("the alert about v%s could not be sent: %s", exc.version, err)

    def refresh(self) -> Serving:
        """Read aliases and share; load what is new; swap. On error, keep serving what we have."""
        try:
            aliases = model_store.aliases(self.settings)
            champ_v, can_v = aliases.get("champion"), aliases.get("canary")
            share = model_store.canary_share(self.settings) if can_v else 0.0
            new = Serving(self._load(champ_v), self._load(can_v), share)
            self.serving = new  # atomic reference swap
            keep = {v for v in (champ_v, can_v) if v}
            self.cache = {v: m for v, m in self.cache.items() if v in keep}
            self.last_refresh = time.time()
            self.last_error = None
        except Exception as exc:  # noqa: BLE001 - the poller must survive registry hiccups; surfaced on /readyz and /stats
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("alias refresh failed, still serving previous models: %s", self.last_error)
        return self.serving


class Poller:
    def __init__(self, pool: ModelPool, *, every: float) -> None:
        self.pool, self.every = pool, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alias-poller", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.pool.refresh()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class Refused(Exception):
    """A request refused for its key: 401 (none or unknown) or 403 (not for this app)."""

    def __init__(self, status: int, message: str, hint: str) -> None:
        super().__init__(message)
        self.status, self.message, self.hint = status, message, hint


def _refused(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Refused)
    headers = {"WWW-Authenticate": 'Bearer realm="lakeloop"'} if exc.status == 401 else None
    return JSONResponse({"error": exc.message, "hint": exc.hint}, status_code=exc.status, headers=headers)


def may_score(caller: Caller, app_id: str | None) -> None:
    """Refused (403) when a key scoped to apps sends a request for another app or none."""
    if caller.app_ids is None:
        return
    if app_id is None or not caller.may_send_for(app_id):
        raise Refused(403, "this API key may not score for " + (f"app_id {app_id!r}" if app_id else "a request without app_id"),
                      "send the app_id this key was made for, or use a key without @app_id (LAKELOOP_SERVE_API_KEYS)")


def create_app(settings: Settings, *, publisher: Publisher | None, poll_seconds: float | None = None) -> FastAPI:
    """The app; the poller starts and stops with it. ``publisher`` None disables publishing (tests only)."""
    from contextlib import asynccontextmanager

    keys = parse_keys(settings.serve_api_keys, setting="LAKELOOP_SERVE_API_KEYS")

    def caller(request: Request) -> Caller:  # a dependency: runs before the body is validated (401 before 422)
        found = keys.caller(request.headers.get("authorization"))
        if found is None:
            raise Refused(401, "a valid API key is required", "send `Authorization: Bearer <key>`")
        return found

    pool = ModelPool(settings)
    counters = Counters()
    poller = Poller(pool, every=poll_seconds or settings.serve_poll_seconds)

    @asynccontextmanager
    async def lifespan(_: FastAPI):  # type: ignore[no-untyped-def]
        pool.refresh()
        poller.start()
        try:
            yield
        finally:
            poller.stop()
            for closer in ("flush", "close"):
                fn = getattr(publisher, closer, None)
                if fn is not None:
                    fn()

    app = FastAPI(title="lakeloop scoring service", lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=settings.serve_max_body_bytes)
    app.add_exception_handler(RequestValidationError, invalid_request)  # type: ignore[arg-type]
    app.add_exception_handler(Refused, _refused)
    app.state.pool, app.state.counters = pool, counters
    no_champion = {
        "error": f"no `champion` version of {settings.registered_model_name} in the MLflow registry at {settings.tracking_uri}",
        "hint": "train and register a model, then `lakeloop promote --start` (or wait for the training job's gate)",
    }

    # /healthz, /readyz and /stats never block: async, they answer even while every worker thread of /score
    # waits on Kafka
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        s = pool.serving
        body = {
            "ready": s.champion is not None,
            "champion": s.champion.version if s.champion else None,
            "canary": s.canary.version if s.canary else None,
            "canary_share": s.canary_share,
            "last_refresh": pool.last_refresh,
            "last_error": pool.last_error,
        }
        if s.champion is None:
            return JSONResponse({**body, **no_champion}, status_code=503)
        return JSONResponse(body)

    @app.get("/stats", dependencies=[Depends(caller)])
    async def stats() -> dict[str, Any]:
        with counters.lock:
            out: dict[str, Any] = {"requests": dict(counters.requests), "errors": dict(counters.errors)}
        for attr in ("sent", "failed", "last_error"):
            out[f"publish_{attr}"] = getattr(publisher, attr, None)
        return out

    @app.post("/score", response_model=ScoreResponse)
    def score(req: ScoreRequest, who: Caller = Depends(caller)) -> Any:  # noqa: B008 - FastAPI's dependency idiom
        may_score(who, req.app_id)
        s = pool.serving  # one snapshot for the whole request
        if s.champion is None:
            return JSONResponse(no_champion, status_code=503)
        alias = route(req.conversation_id, s.canary_share, has_canary=s.canary is not None)
        chosen = s.canary if alias == "canary" and s.canary is not None else s.champion
        t0 = time.perf_counter()
        try:
            value = predict_score(chosen.model, req.prompt, req.response)
        except Exception as exc:  # noqa: BLE001 - counted against that version; the champion answers instead
            counters.count(chosen.version, error=True)
            log.warning("version %s failed: %s", chosen.version, exc)
            if chosen is s.champion:
                return JSONResponse({"error": f"model version {chosen.version} failed: {exc}", "hint": "see the service log"}, status_code=500)
            alias, chosen = "champion", s.champion
            t0 = time.perf_counter()
            value = predict_score(chosen.model, req.prompt, req.response)
        latency = (time.perf_counter() - t0) * 1000.0
        record = PredictionRecord(
            request_id=req.request_id or uuid.uuid4().hex,
            response_id=req.response_id or uuid.uuid4().hex,
            conversation_id=req.conversation_id,
            model_name=settings.registered_model_name,
            model_version=chosen.version,
            alias=alias,  # type: ignore[arg-type]
            score=value,
            latency_ms=latency,
            prompt=req.prompt,
            response=req.response,
            served_at=rfc3339_now(),
        )
        size = len(record.to_json())
        if size > settings.max_event_bytes:
            return JSONResponse({
                "error": f"the prediction record would be {size} bytes, over the limit of {settings.max_event_bytes} (max_event_bytes)",
                "hint": "send a shorter prompt and response",
            }, status_code=413)
        if publisher is not None:
            try:
                publisher.publish(record)
            except PublishError as exc:  # not served: no score without its record, and no count against the version
                log.warning("prediction %s not recorded: %s", record.request_id, exc.message)
                return JSONResponse({"error": f"prediction not recorded: {exc.message}", "hint": exc.hint}, status_code=503,
                                    headers={"Retry-After": "1"})
        counters.count(chosen.version, error=False)
        return ScoreResponse(
            request_id=record.request_id, response_id=record.response_id, score=value,
            model_version=chosen.version, alias=alias, latency_ms=latency,
        )

    return app


def run(settings: Settings, *, host: str | None = None, port: int | None = None, poll_seconds: float | None = None) -> None:
    """Serve until interrupted (``lakeloop serve``). ConfigError beyond loopback without ``serve_api_keys``."""
    import uvicorn

    from infra.surfaces import require_credentials
    from monitors.predictions import KafkaPublisher

    host = host or settings.serve_bind_host
    require_credentials(settings, ("serve",), serve_host=host)

    app = create_app(settings, publisher=KafkaPublisher(settings, ack_timeout_s=settings.serve_publish_timeout_s),
                     poll_seconds=poll_seconds)
    uvicorn.run(app, host=host, port=port or settings.serve_port, log_level="info")
