"""Alerts: one notifier, several channels (JSON webhook, Slack, Teams, local log), de-duplicated, storm-proof.

De-duplication: an alert with the same key is sent at most once per ``dedup_seconds``. Storm control: at
most ``storm_limit`` alerts per ``storm_seconds`` leave the machine; the rest are counted and the count
rides along on the next alert that goes out. State lives in a small JSON file under a file lock, so
separate processes (Dagster runs, the CLI) share it. The log file records every alert and its fate.
"""

from __future__ import annotations

import fcntl
import json
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Literal, Protocol

import httpx

from infra.errors import ConfigError
from infra.settings import Settings

AlertKind = Literal["drift", "gate_failed", "rollback", "promote", "run_failure", "canary_started", "autopilot_waiting",
                    "autopilot_paused", "external_change", "challenger_retired"]
Severity = Literal["info", "warning", "critical"]
WebhookFormat = Literal["json", "slack", "teams"]
Status = Literal["sent", "duplicate", "storm_suppressed"]
_COLORS = {"info": "2E86C1", "warning": "F39C12", "critical": "C0392B"}


@dataclass(frozen=True)
class Alert:
    kind: AlertKind
    summary: str
    severity: Severity = "warning"
    details: Mapping[str, Any] = field(default_factory=dict)
    links: Mapping[str, str] = field(default_factory=dict)  # name -> URL (report, Dagster run, MLflow version)
    dedup_key: str | None = None

    @property
    def key(self) -> str:
        return self.dedup_key or f"{self.kind}:{self.summary}"

    def title(self) -> str:
        return f"[lakeloop {self.severity}] {self.kind}: {self.summary}"


class Channel(Protocol):
    name: str

    def send(self, alert: Alert, *, suppressed: int) -> None: ...


def payload(alert: Alert, fmt: WebhookFormat, *, suppressed: int = 0) -> dict[str, Any]:
    """The request body for a webhook of the given flavour."""
    note = f" ({suppressed} more alerts were suppressed by storm control)" if suppressed else ""
    if fmt == "json":
        return {
            "kind": alert.kind, "severity": alert.severity, "summary": alert.summary + note, "details": dict(alert.details),
            "links": dict(alert.links), "dedup_key": alert.key, "suppressed": suppressed,
            "sent_at": datetime.now(timezone.utc).isoformat(),
        }
    facts = [(str(k), str(v)) for k, v in alert.details.items()]
    if fmt == "slack":
        lines = [f"*{alert.title()}*{note}"] + [f"• {k}: {v}" for k, v in facts]
        links = " | ".join(f"<{url}|{name}>" for name, url in alert.links.items())
        blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}}]
        if links:
            blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": links}]})
        return {"text": alert.title() + note, "blocks": blocks}
    return {  # Teams incoming webhook: legacy MessageCard
        "@type": "MessageCard",
        "@context": "https://schema.org/extensions",
        "summary": alert.title(),
        "themeColor": _COLORS[alert.severity],
        "title": alert.title(),
        "text": alert.summary + note,
        "sections": [{"facts": [{"name": k, "value": v} for k, v in facts]}] if facts else [],
        "potentialAction": [
            {"@type": "OpenUri", "name": name, "targets": [{"os": "default", "uri": url}]} for name, url in alert.links.items()
        ],
    }


@dataclass
class WebhookChannel:
    url: str
    fmt: WebhookFormat = "json"
    timeout: float = 5.0
    retries: int = 1

    @property
    def name(self) -> str:
        return f"{self.fmt}+{self.url}"

    def send(self, alert: Alert, *, suppressed: int) -> None:
        body = payload(alert, self.fmt, suppressed=suppressed)
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                r = httpx.post(self.url, json=body, timeout=self.timeout)
                if r.status_code < 500:
                    r.raise_for_status()
                    return
                last = RuntimeError(f"HTTP {r.status_code}")
            except (httpx.HTTPError, RuntimeError) as exc:
                last = exc
            time.sleep(0.2 * (attempt + 1))
        raise RuntimeError(f"webhook {self.url} failed: {last}")


@dataclass
class LogFileChannel:
    path: Path
    name: str = "log"

    def record(self, alert: Alert, *, status: Status, suppressed: int = 0, failures: Mapping[str, str] | None = None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"at": datetime.now(timezone.utc).isoformat(), "status": status, "suppressed": suppressed,
                 "failures": dict(failures or {}), **asdict(alert), "key": alert.key}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry, default=str) + "\n")

    def send(self, alert: Alert, *, suppressed: int) -> None:
        self.record(alert, status="sent", suppressed=suppressed)


@dataclass(frozen=True)
class AlertPolicy:
    dedup_seconds: float = 3600.0
    storm_limit: int = 5
    storm_seconds: float = 600.0


@dataclass(frozen=True)
class Delivery:
    status: Status
    failures: Mapping[str, str]  # channel name -> error, for channels that failed

    @property
    def delivered(self) -> bool:
        return self.status == "sent" and not self.failures


class Notifier:
    def __init__(
        self,
        channels: Sequence[Channel],
        *,
        log: LogFileChannel,
        state_path: Path,
        policy: AlertPolicy = AlertPolicy(),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.channels = list(channels)
        self.log = log
        self.state_path = state_path
        self.policy = policy
        self.clock = clock

    @contextmanager
    def _state(self) -> Iterator[dict[str, Any]]:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.state_path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}
            except json.JSONDecodeError:
                state = {}
            state.setdefault("last_sent", {})
            state.setdefault("recent", [])
            state.setdefault("suppressed", 0)
            yield state
            tmp = self.state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(state))
            tmp.replace(self.state_path)

    def notify(self, alert: Alert) -> Delivery:
        """Send unless it is a duplicate or the storm limit is reached; the log file always records it."""
        now = self.clock()
        with self._state() as state:
            last = state["last_sent"].get(alert.key)
            if last is not None and now - last < self.policy.dedup_seconds:
                self.log.record(alert, status="duplicate")
                return Delivery("duplicate", {})
            state["recent"] = [t for t in state["recent"] if now - t < self.policy.storm_seconds]
            if len(state["recent"]) >= self.policy.storm_limit:
                state["suppressed"] += 1
                self.log.record(alert, status="storm_suppressed")
                return Delivery("storm_suppressed", {})
            suppressed = state["suppressed"]
            state["suppressed"] = 0
            state["recent"].append(now)
            state["last_sent"][alert.key] = now
            state["last_sent"] = {k: t for k, t in state["last_sent"].items() if now - t < self.policy.dedup_seconds}
        failures: dict[str, str] = {}
        for channel in self.channels:
            try:
                channel.send(alert, suppressed=suppressed)
            except Exception as exc:  # one broken channel must not silence the others; recorded below
                failures[channel.name] = str(exc)
        self.log.record(alert, status="sent", suppressed=suppressed, failures=failures)
        return Delivery("sent", failures)


def parse_webhooks(spec: str) -> list[WebhookChannel]:
    """``json+URL,slack+URL,teams+URL`` (a plain URL is a JSON webhook)."""
    out = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        fmt, sep, url = item.partition("+")
        if not sep or fmt not in ("json", "slack", "teams"):
            fmt, url = "json", item
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"alert webhook {item!r} is not an http(s) URL", hint="set LAKELOOP_ALERT_WEBHOOKS like slack+https://hooks.slack.com/...")
        out.append(WebhookChannel(url=url, fmt=fmt))  # type: ignore[arg-type]
    return out


def notifier_from_settings(settings: Settings, *, policy: AlertPolicy | None = None) -> Notifier:
    policy = policy or AlertPolicy(dedup_seconds=settings.alert_dedup_seconds)
    return Notifier(
        parse_webhooks(settings.alert_webhooks),
        log=LogFileChannel(settings.logs_dir / "alerts.jsonl"),
        state_path=settings.home / "alerts" / "state.json",
        policy=policy,
    )
