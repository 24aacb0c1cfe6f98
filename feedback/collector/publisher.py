"""The collector's way to Kafka: ``FeedbackProducer`` (idempotent, acks=all), acknowledged before we answer.

A watcher thread owns the producer's life: it creates it (topic and its metadata included) once the broker's
port answers, checks the port every ``watch_every_s`` and drops the producer when the broker is gone or a send
failed, then makes a fresh one when the broker is back. Requests never wait for that: while there is no
producer, ``publish`` raises ``KafkaUnavailable`` at once and nothing of the request is sent. With a producer,
every event is queued and its acknowledgement awaited on the event loop (``timeout_s`` for the whole request);
each comes back acknowledged or with why not. An event whose wait ran out may still land (the broker can store
what it did not acknowledge in time): a retry doubles it in bronze and silver keeps one (by event_id).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Protocol

from feedback.collector.verdicts import Publishable
from feedback.producer import FeedbackProducer
from infra.errors import ServiceError
from infra.services import port_in_use
from infra.settings import Settings


class KafkaUnavailable(ServiceError):
    """Kafka cannot take events now; nothing of the request was sent."""


class EventPublisher(Protocol):
    async def publish(self, events: Sequence[Publishable]) -> list[str | None]:
        """Per event: None once Kafka acknowledged it, else why not. ``KafkaUnavailable``: nothing was sent."""
        ...

    def unready(self) -> str | None:
        """None when events can be published now, else why not."""
        ...

    def start(self) -> None: ...

    def close(self) -> None: ...


def bootstrap_reachable(bootstrap: str) -> bool:
    """A TCP connection to one of the bootstrap servers (``host:port,...``) opens."""
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        if host and port.isdigit() and port_in_use(host.strip("[]"), int(port)):
            return True
    return False


class KafkaEventPublisher:
    def __init__(self, settings: Settings, *, timeout_s: float | None = None, linger_ms: int = 1,
                 watch_every_s: float = 0.5) -> None:
        self.settings = settings
        self.timeout_s = timeout_s or settings.collector_publish_timeout_s
        self.linger_ms = linger_ms
        self.watch_every_s = watch_every_s
        self._producer: FeedbackProducer | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="collector-kafka-watch", daemon=True)
        self.last_error: str | None = "connecting to Kafka"

    # ---- the request path ------------------------------------------------------------------------------
    async def publish(self, events: Sequence[Publishable]) -> list[str | None]:
        """Queue every event and await Kafka's acknowledgements on the event loop (no thread per request).

        ``send`` does not block here: the watcher fetched the topic's metadata before handing out the producer.
        """
        producer = self._producer
        if producer is None:
            raise KafkaUnavailable(f"Kafka at {self.settings.bootstrap_servers} is not available ({self.last_error})",
                                   hint="nothing was sent; retry after Retry-After seconds")
        loop = asyncio.get_running_loop()
        errors: list[str | None] = [None] * len(events)
        waits: dict[asyncio.Future, int] = {}
        for i, event in enumerate(events):
            try:
                sent = producer.send(event.raw, key=event.key)
            except Exception as exc:  # noqa: BLE001 - metadata timeout, producer closed: this one and the rest not sent
                errors[i:] = [f"not sent: {_text(exc)}"] * (len(events) - i)
                break
            ack = loop.create_future()
            sent.add_callback(lambda _meta, ack=ack: loop.call_soon_threadsafe(_settle, ack, None))
            sent.add_errback(lambda exc, ack=ack: loop.call_soon_threadsafe(_settle, ack, _text(exc)))
            waits[ack] = i
        if waits:
            # the producer gives a record up at timeout_s; the margin lets its verdict arrive first
            done, late = await asyncio.wait(waits, timeout=self.timeout_s + 0.5)
            for ack in done:
                if ack.result() is not None:
                    errors[waits[ack]] = f"not acknowledged by Kafka: {ack.result()}"
            for ack in late:
                errors[waits[ack]] = f"not acknowledged by Kafka within {self.timeout_s:g} s"
        failed = next((e for e in errors if e), None)
        if failed is not None:
            self._drop(producer, failed)
        return errors

    def unready(self) -> str | None:
        if self._producer is None:
            return self.last_error or "connecting to Kafka"
        if not bootstrap_reachable(self.settings.bootstrap_servers):
            return f"Kafka at {self.settings.bootstrap_servers} does not answer"
        return None

    # ---- the producer's life ------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            _close_quietly(producer, timeout_s=5.0)

    def _watch(self) -> None:
        while not self._stop.is_set():
            reachable = bootstrap_reachable(self.settings.bootstrap_servers)
            if self._producer is not None and not reachable:
                self._drop(self._producer, f"Kafka at {self.settings.bootstrap_servers} does not answer")
            elif self._producer is None and reachable:
                self._connect()
            elif self._producer is None:
                self.last_error = f"Kafka at {self.settings.bootstrap_servers} does not answer"
            self._wake.wait(self.watch_every_s)
            self._wake.clear()

    def _connect(self) -> None:
        timeout_ms = max(int(self.timeout_s * 1000), self.linger_ms + 1)
        try:
            producer = FeedbackProducer(
                self.settings, linger_ms=self.linger_ms, delivery_timeout_ms=timeout_ms,
                request_timeout_ms=timeout_ms - self.linger_ms, max_block_ms=timeout_ms,
                bootstrap_timeout_ms=max(timeout_ms, 5000), reconnect_backoff_max_ms=1000)
        except Exception as exc:  # noqa: BLE001 - ServiceError, a broker still starting: try again on the next watch
            self.last_error = f"cannot connect a producer: {_text(exc)}"
            return
        try:
            producer.partitions()  # the topic's metadata, so that sends on the event loop never wait for it
        except Exception as exc:  # noqa: BLE001 - as above
            self.last_error = f"no metadata for topic {producer.topic}: {_text(exc)}"
            _close_quietly(producer, timeout_s=0.0)
            return
        with self._lock:
            if self._stop.is_set():
                _close_quietly(producer, timeout_s=0.0)
                return
            self._producer = producer
            self.last_error = None

    def _drop(self, producer: FeedbackProducer, why: str) -> None:
        """Retire ``producer`` (if it is still the current one); the watcher makes a fresh one when Kafka answers."""
        with self._lock:
            if self._producer is not producer:
                return
            self._producer = None
            self.last_error = why
        threading.Thread(target=_close_quietly, args=(producer,), kwargs={"timeout_s": 1.0}, daemon=True).start()
        self._wake.set()


def _settle(ack: asyncio.Future, error: str | None) -> None:
    if not ack.done():
        ack.set_result(error)


def _close_quietly(producer: FeedbackProducer, *, timeout_s: float) -> None:
    try:
        producer.close(timeout_s)
    except Exception:  # noqa: BLE001 - a retired producer's undelivered records were already reported per event
        pass


def _text(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__
