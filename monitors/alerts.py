"""Alerts: one notifier, several channels (JSON webhook, Slack, Teams, local log), de-duplicated, storm-proof.

Formats: ``json`` (lakeloop's own record), ``slack`` (Block Kit: header, summary, facts, a button per link) and
``teams`` (a Workflows webhook message carrying an Adaptive Card 1.4: text blocks, a fact set, an ``Action.OpenUrl``
per link). Links are http(s) only (``infra.links`` builds them). Webhook URLs are secrets: channel names, errors and
the log file carry them cut to scheme and host.

Pictures (drift, canary, gate) are links too, a button or an ``Action.OpenUrl`` like the others, not an inline image:
Slack downloads an ``image`` block's URL from its own servers, which cannot reach an MLflow server on a private network,
and refuses the whole message when the download fails; a link opens in the reader's browser, which can.

De-duplication: an alert with the same key is sent at most once per ``dedup_seconds``. Storm control: at
most ``storm_limit`` alerts per ``storm_seconds`` leave the machine; the rest are counted and the count
rides along on the next alert that goes out. State lives in a small JSON file under a file lock, so
separate processes (Dagster runs, the CLI) share it. The log file records every alert and its fate.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Literal, Protocol
from urllib.parse import urlsplit

import httpx

from infra.errors import ConfigError
from infra.links import checked
from infra.secrets import reveal, secret_values
from infra.settings import Settings

AlertKind = Literal["drift", "gate_failed", "rollback", "promote", "run_failure", "canary_started", "autopilot_waiting",
                    "autopilot_paused", "external_change", "challenger_retired", "untrusted_model"]
Severity = Literal["info", "warning", "critical"]
WebhookFormat = Literal["json", "slack", "teams"]
Status = Literal["sent", "duplicate", "storm_suppressed"]
_SLACK_ICONS = {"info": ":information_source:", "warning": ":warning:", "critical": ":rotating_light:"}
_CARD_COLORS = {"info": "Accent", "warning": "Warning", "critical": "Attention"}  # Adaptive Card TextBlock colors
_LINK_LABELS = {"report": "Drift report", "report_file": "Download report", "dagster_run": "Dagster run",
                "mlflow_run": "MLflow run", "model": "Model version", "canary_model": "Canary model",
                "champion_model": "Champion model", "drift_picture": "Drift picture", "canary_picture": "Canary picture",
                "gate_picture": "Gate picture"}
# Block Kit limits (docs.slack.dev, reference/block-kit): header text 150, section text 3000, 10 fields of 2000,
# button text 75 and url 3000, 25 elements in an actions block
_SLACK_MAX = {"header": 150, "section": 3000, "fields": 10, "field": 2000, "button": 75, "url": 3000, "actions": 25}


@dataclass(frozen=True)
class Alert:
    kind: AlertKind
    summary: str
    severity: Severity = "warning"
    details: Mapping[str, Any] = field(default_factory=dict)
    links: Mapping[str, str | None] = field(default_factory=dict)  # name -> http URL (report, Dagster run, MLflow version)
    dedup_key: str | None = None

    def __post_init__(self) -> None:  # missing links (None) dropped; a file:// one is a bug: ValueError
        object.__setattr__(self, "links", checked(self.links))

    @property
    def key(self) -> str:
        return self.dedup_key or f"{self.kind}:{self.summary}"

    def title(self) -> str:
        return f"[lakeloop {self.severity}] {self.kind}: {self.summary}"


class Channel(Protocol):
    name: str

    def send(self, alert: Alert, *, suppressed: int) -> None: ...


def link_label(name: str) -> str:
    return _LINK_LABELS.get(name, name.replace("_", " ").capitalize())


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _mrkdwn(text: str) -> str:
    """Slack treats ``&``, ``<`` and ``>`` as markup (``<!channel>`` pings everyone)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(alert: Alert, note: str = "") -> dict[str, Any]:
    """Block Kit message for a Slack incoming webhook; ``text`` is the notification's fallback."""
    m = _SLACK_MAX
    header = f"{_SLACK_ICONS[alert.severity]} lakeloop {alert.severity}: {alert.kind}"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _cut(header, m["header"]), "emoji": True}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _cut(_mrkdwn(alert.summary + note) or "-", m["section"])}},
    ]
    facts = [(str(k), str(v)) for k, v in alert.details.items()]
    if len(facts) > m["fields"]:
        facts = facts[: m["fields"] - 1] + [("more", f"{len(facts) - m['fields'] + 1} more details in alerts.jsonl")]
    if facts:
        blocks.append({"type": "section", "fields": [
            {"type": "mrkdwn", "text": _cut(f"*{_mrkdwn(k)}*\n{_mrkdwn(v)}", m["field"])} for k, v in facts]})
    buttons = [
        {"type": "button", "text": {"type": "plain_text", "text": _cut(link_label(name), m["button"])}, "url": url,
         "action_id": f"lakeloop-link-{i}"}
        for i, (name, url) in enumerate(alert.links.items()) if len(url) <= m["url"]
    ]
    if buttons:
        blocks.append({"type": "actions", "elements": buttons[: m["actions"]]})
    return {"text": _cut(alert.title() + note, m["section"]), "blocks": blocks}


def teams_payload(alert: Alert, note: str = "") -> dict[str, Any]:
    """A Teams Workflows webhook message ("Send webhook alerts to a channel") carrying one Adaptive Card."""
    body: list[dict[str, Any]] = [
        {"type": "TextBlock", "text": f"lakeloop {alert.severity}: {alert.kind}", "weight": "Bolder", "size": "Medium",
         "wrap": True, "color": _CARD_COLORS[alert.severity]},
        {"type": "TextBlock", "text": alert.summary + note or "-", "wrap": True},
    ]
    if alert.details:
        body.append({"type": "FactSet", "facts": [{"title": str(k), "value": str(v)} for k, v in alert.details.items()]})
    card: dict[str, Any] = {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard",
                            "version": "1.4", "msteams": {"width": "Full"}, "body": body}
    if alert.links:
        card["actions"] = [{"type": "Action.OpenUrl", "title": link_label(name), "url": url} for name, url in alert.links.items()]
    return {"type": "message",
            "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}]}


def payload(alert: Alert, fmt: WebhookFormat, *, suppressed: int = 0) -> dict[str, Any]:
    """The request body for a webhook of the given flavour."""
    note = f" ({suppressed} more alerts were suppressed by storm control)" if suppressed else ""
    if fmt == "json":
        return {
            "kind": alert.kind, "severity": alert.severity, "summary": alert.summary + note, "details": dict(alert.details),
            "links": dict(alert.links), "dedup_key": alert.key, "suppressed": suppressed,
            "sent_at": datetime.now(timezone.utc).isoformat(),
        }
    return slack_payload(alert, note) if fmt == "slack" else teams_payload(alert, note)


def redact_url(url: str) -> str:
    """A webhook URL cut to scheme and host (its path and query are the secret): ``https://hooks.slack.com/…``."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}{f':{parts.port}' if parts.port else ''}/…"


def redact(text: str, secrets: Sequence[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):  # a longer URL before one it starts with
        if secret:
            text = text.replace(secret, redact_url(secret) if secret.startswith(("http://", "https://")) else "[redacted]")
    return text


@dataclass
class WebhookChannel:
    url: str = field(repr=False)  # a secret: whoever holds it can post to the channel
    fmt: WebhookFormat = "json"
    timeout: float = 5.0
    retries: int = 1

    @property
    def name(self) -> str:
        """Format and host, and a short digest to tell two webhooks on one host apart; never the URL itself."""
        return f"{self.fmt}+{redact_url(self.url)}#{hashlib.sha256(self.url.encode()).hexdigest()[:8]}"

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
        raise RuntimeError(redact(f"webhook {self.name} failed: {last}", [self.url]))  # httpx errors quote the URL


@dataclass
class LogFileChannel:
    path: Path
    name: str = "log"

    def record(self, alert: Alert, *, status: Status, suppressed: int = 0, failures: Mapping[str, str] | None = None,
               secrets: Sequence[str] = ()) -> None:
        """Append one line; any of ``secrets`` (the webhook URLs) in it is cut to scheme and host."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"at": datetime.now(timezone.utc).isoformat(), "status": status, "suppressed": suppressed,
                 "failures": dict(failures or {}), **asdict(alert), "key": alert.key}
        line = json.dumps(entry, default=str)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(redact(line, [json.dumps(x)[1:-1] for x in secrets]) + "\n")

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
        secrets: Sequence[str] = (),
    ) -> None:
        self.channels = list(channels)
        self.log = log
        self.state_path = state_path
        self.policy = policy
        self.clock = clock
        self._secrets = [url for c in self.channels if isinstance(url := getattr(c, "url", None), str)] + list(secrets)

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
                self.log.record(alert, status="duplicate", secrets=self._secrets)
                return Delivery("duplicate", {})
            state["recent"] = [t for t in state["recent"] if now - t < self.policy.storm_seconds]
            if len(state["recent"]) >= self.policy.storm_limit:
                state["suppressed"] += 1
                self.log.record(alert, status="storm_suppressed", secrets=self._secrets)
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
                failures[channel.name] = redact(str(exc), self._secrets)
        self.log.record(alert, status="sent", suppressed=suppressed, failures=failures, secrets=self._secrets)
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
        parse_webhooks(reveal(settings.alert_webhooks)),
        log=LogFileChannel(settings.logs_dir / "alerts.jsonl"),
        state_path=settings.home / "alerts" / "state.json",
        policy=policy,
        secrets=secret_values(settings),  # any other secret an alert's text might quote (infra.secrets)
    )
