"""Alert payloads in the shapes Slack (Block Kit) and Teams (Workflows webhook, Adaptive Card 1.4) document, checked
by a local receiver that refuses anything else the way those services do; webhook URLs (secrets) stay out of the log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from monitors.alerts import Alert, AlertPolicy, LogFileChannel, Notifier, WebhookChannel, payload, redact_url
from tests.monitoring_helpers import Receiver

LINKS = {"report": "http://mlflow.example:5000/#/experiments/3/runs/abc/artifacts/drift_report/w.html",
         "dagster_run": "http://dagster.example:3000/runs/0b1c", "model": "http://mlflow.example:5000/#/models/m/versions/7"}
ALERTS = {
    "plain": Alert("autopilot_paused", "autopilot turned off", "warning"),
    "links": Alert("drift", "drift (data) for 3 windows in a row on m", "warning", {"window": "w1", "psi": 0.31}, LINKS),
    "long": Alert("run_failure", "Dagster run failed: " + "x" * 5000, "critical",
                  {f"metric_{i}": "y" * 2500 for i in range(14)}, {"dagster_run": LINKS["dagster_run"]}),
    "markup": Alert("gate_failed", "check <!channel> & <b>gate</b> failed", "critical", {"why": "a < b & c > d"},
                    {"dagster_run": LINKS["dagster_run"]}),
}

# ---- the documented shapes -------------------------------------------------------------------------------------
# Block Kit (docs.slack.dev/reference/block-kit): a message has at most 50 blocks; header: plain_text <= 150;
# section: text <= 3000 or <= 10 fields of <= 2000; context: <= 10 elements; actions: <= 25 elements, a button has
# plain_text text <= 75, url <= 3000, action_id <= 255 and unique. Adaptive Card (adaptivecards.io, Teams Workflows
# "Send webhook alerts to a channel"): message > attachments > contentType application/vnd.microsoft.card.adaptive,
# content type AdaptiveCard with version and body; Action.OpenUrl needs title and url.


def _text_object(t: Any, *, kinds: tuple[str, ...] = ("plain_text", "mrkdwn"), limit: int = 3000) -> list[str]:
    if not isinstance(t, dict) or t.get("type") not in kinds or not isinstance(t.get("text"), str) or not t["text"]:
        return [f"bad text object {t!r:.80}"]
    return [f"text over {limit}: {len(t['text'])}"] if len(t["text"]) > limit else []


def slack_problems(body: Any) -> list[str]:
    if not isinstance(body, dict) or not isinstance(body.get("text"), str) or not body["text"]:
        return ["a fallback `text` is required"]
    blocks = body.get("blocks")
    if not isinstance(blocks, list) or not 0 < len(blocks) <= 50:
        return ["blocks must be a list of 1..50"]
    out: list[str] = []
    action_ids: set[str] = set()
    for b in blocks:
        kind = b.get("type")
        if kind == "header":
            out += _text_object(b.get("text"), kinds=("plain_text",), limit=150)
        elif kind == "section":
            if "fields" in b:
                f = b["fields"]
                out += ["section fields: 1..10"] if not isinstance(f, list) or not 0 < len(f) <= 10 else []
                out += [p for x in (f if isinstance(f, list) else []) for p in _text_object(x, limit=2000)]
            if "text" in b:
                out += _text_object(b["text"])
            if "text" not in b and "fields" not in b:
                out.append("section needs text or fields")
        elif kind == "context":
            els = b.get("elements")
            out += ["context elements: 1..10"] if not isinstance(els, list) or not 0 < len(els) <= 10 else []
        elif kind == "actions":
            els = b.get("elements")
            if not isinstance(els, list) or not 0 < len(els) <= 25:
                out.append("actions elements: 1..25")
                continue
            for e in els:
                if e.get("type") != "button":
                    out.append(f"unknown action element {e.get('type')}")
                    continue
                out += _text_object(e.get("text"), kinds=("plain_text",), limit=75)
                url = e.get("url")
                if not isinstance(url, str) or not url.startswith(("http://", "https://")) or len(url) > 3000:
                    out.append(f"button url {url!r:.80}")
                aid = e.get("action_id", "")
                if len(aid) > 255 or aid in action_ids:
                    out.append(f"action_id {aid!r}")
                action_ids.add(aid)
        elif kind != "divider":
            out.append(f"unknown block type {kind!r}")
    return out


def teams_problems(body: Any) -> list[str]:
    if not isinstance(body, dict) or body.get("type") != "message":
        return ['the body must be {"type": "message", ...}']
    atts = body.get("attachments")
    if not isinstance(atts, list) or not atts:
        return ["attachments must be a non-empty list"]
    out: list[str] = []
    for a in atts:
        if a.get("contentType") != "application/vnd.microsoft.card.adaptive":
            out.append(f"contentType {a.get('contentType')!r}")
        card = a.get("content")
        if not isinstance(card, dict) or card.get("type") != "AdaptiveCard":
            out.append("content must be an AdaptiveCard")
            continue
        version = card.get("version")
        if not isinstance(version, str) or tuple(int(x) for x in version.split(".")) < (1, 4):
            out.append(f"version {version!r} (1.4 or later)")
        if not isinstance(card.get("body"), list) or not card["body"]:
            out.append("body must be a non-empty list")
        for el in card.get("body") or []:
            if el.get("type") == "TextBlock":
                out += [] if isinstance(el.get("text"), str) and el["text"] else ["TextBlock without text"]
            elif el.get("type") == "FactSet":
                facts = el.get("facts")
                ok = isinstance(facts, list) and facts and all(isinstance(f.get("title"), str) and isinstance(f.get("value"), str) for f in facts)
                out += [] if ok else ["FactSet facts need title and value strings"]
            else:
                out.append(f"unexpected element {el.get('type')!r}")
        for act in card.get("actions", []):
            url = act.get("url")
            if act.get("type") != "Action.OpenUrl" or not act.get("title") or not isinstance(url, str) or not url.startswith(("http://", "https://")):
                out.append(f"bad action {act!r:.120}")
    return out


class ValidatingReceiver(Receiver):
    """Slack at /slack (200 "ok", or 400 "invalid_blocks"), Teams Workflows at /teams (202, or 400); anything else 404."""

    def __init__(self) -> None:
        super().__init__()
        self.rejected: list[tuple[str, list[str]]] = []

    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        path = path.split("?")[0]
        check = slack_problems if path.startswith("/slack") else teams_problems if path.startswith("/teams") else None
        if check is None:
            return 404, b""
        problems = check(body)
        if problems:
            self.rejected.append((path, problems))
            return 400, b"invalid_blocks"
        self.received.append((path, body))
        return (200 if path.startswith("/slack") else 202), b"ok"


def notifier(tmp_path: Path, channels: list[WebhookChannel]) -> Notifier:
    return Notifier(channels, log=LogFileChannel(tmp_path / "alerts.jsonl"), state_path=tmp_path / "state.json",
                    policy=AlertPolicy(dedup_seconds=0, storm_limit=100))


@pytest.mark.parametrize("name", sorted(ALERTS))
@pytest.mark.parametrize("suppressed", [0, 4])
def test_payloads_have_the_documented_shapes(name: str, suppressed: int) -> None:
    alert = ALERTS[name]
    assert slack_problems(payload(alert, "slack", suppressed=suppressed)) == []
    assert teams_problems(payload(alert, "teams", suppressed=suppressed)) == []


def test_slack_blocks_carry_a_header_the_summary_facts_and_a_button_per_link() -> None:
    body = payload(ALERTS["links"], "slack", suppressed=2)
    types = [b["type"] for b in body["blocks"]]
    assert types == ["header", "section", "section", "actions"]
    assert "drift" in body["blocks"][0]["text"]["text"] and "2 more alerts were suppressed" in body["text"]
    buttons = body["blocks"][-1]["elements"]
    assert [(b["text"]["text"], b["url"]) for b in buttons] == [("Drift report", LINKS["report"]), ("Dagster run", LINKS["dagster_run"]),
                                                                ("Model version", LINKS["model"])]
    long = payload(ALERTS["long"], "slack")
    fields = long["blocks"][2]["fields"]
    assert len(fields) == 10 and "5 more details" in fields[-1]["text"]  # 14 facts: 9 shown, the rest counted
    markup = json.dumps(payload(ALERTS["markup"], "slack")["blocks"])
    assert "<!channel>" not in markup and "&lt;!channel&gt;" in markup  # no @channel ping from alert text


def test_teams_card_has_text_facts_and_open_url_actions() -> None:
    body = payload(ALERTS["links"], "teams")
    (att,) = body["attachments"]
    card = att["content"]
    assert [e["type"] for e in card["body"]] == ["TextBlock", "TextBlock", "FactSet"]
    assert card["body"][2]["facts"] == [{"title": "window", "value": "w1"}, {"title": "psi", "value": "0.31"}]
    assert [(a["type"], a["title"], a["url"]) for a in card["actions"]] == [
        ("Action.OpenUrl", "Drift report", LINKS["report"]), ("Action.OpenUrl", "Dagster run", LINKS["dagster_run"]),
        ("Action.OpenUrl", "Model version", LINKS["model"])]
    assert "actions" not in payload(ALERTS["plain"], "teams")["attachments"][0]["content"]


def test_the_receiver_takes_both_formats_and_refuses_the_legacy_ones(tmp_path: Path) -> None:
    with ValidatingReceiver() as rx:
        chans = [WebhookChannel(rx.url("/slack"), "slack"), WebhookChannel(rx.url("/teams"), "teams")]
        n = notifier(tmp_path, chans)
        deliveries = [n.notify(a) for a in ALERTS.values()]
        assert all(d.delivered for d in deliveries), [d.failures for d in deliveries]
        assert len(rx.received) == 2 * len(ALERTS) and rx.rejected == []
        # the checks can fail: the retired MessageCard and a Block Kit message without blocks are refused
        legacy = {"@type": "MessageCard", "@context": "https://schema.org/extensions", "summary": "x", "text": "x"}
        assert teams_problems(legacy) and slack_problems({"text": "x"}) and slack_problems(
            {"text": "x", "blocks": [{"type": "header", "text": {"type": "plain_text", "text": "h" * 151}}]})
        bad = Notifier([_Raw(rx.url("/teams"), legacy)], log=LogFileChannel(tmp_path / "bad.jsonl"), state_path=tmp_path / "bad.json")
        assert not bad.notify(ALERTS["plain"]).delivered and rx.rejected


class _Raw(WebhookChannel):
    """Posts a fixed body: proves the receiver refuses what the services refuse."""

    def __init__(self, url: str, body: dict[str, Any]) -> None:
        super().__init__(url, "teams", retries=0)
        self.body = body

    def send(self, alert: Alert, *, suppressed: int) -> None:
        import httpx

        httpx.post(self.url, json=self.body, timeout=5).raise_for_status()


# ---- webhook URLs are secrets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.slack.com/services/T000/B000/XXXXSECRET", "https://hooks.slack.com/…"),
        ("https://prod-00.westus.logic.azure.com:443/workflows/abc/triggers/manual/paths/invoke?api-version=1&sig=SECRET",
         "https://prod-00.westus.logic.azure.com:443/…"),
        ("http://127.0.0.1:8080/hook?token=SECRET", "http://127.0.0.1:8080/…"),
    ],
)
def test_redact_url_keeps_scheme_and_host_only(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    chan = WebhookChannel(url, "slack")
    assert "SECRET" not in chan.name and "SECRET" not in repr(chan) and chan.name.startswith(f"slack+{shown}")


def test_webhook_urls_never_reach_the_alert_log(tmp_path: Path) -> None:
    with ValidatingReceiver() as rx:
        good = rx.url("/slack/T000/B000/GOODSECRET")
        dead = rx.url("/nowhere/DEADSECRET?sig=QUERYSECRET")  # 404: httpx's error quotes the full URL
        chans = [WebhookChannel(good, "slack"), WebhookChannel(dead, "teams", retries=0)]
        n = Notifier(chans, log=LogFileChannel(tmp_path / "alerts.jsonl"), state_path=tmp_path / "state.json",
                     policy=AlertPolicy(dedup_seconds=3600, storm_limit=100))
        d = n.notify(Alert("run_failure", f"a run failed posting to {dead}", "critical", {"url": good},
                           {"dagster_run": LINKS["dagster_run"]}))
        assert d.status == "sent" and list(d.failures) == [chans[1].name]
        assert n.notify(Alert("run_failure", f"a run failed posting to {dead}", "critical", dedup_key="k")).status == "sent"
        assert n.notify(Alert("run_failure", f"again: {dead}", dedup_key="k")).status == "duplicate"
        assert len(rx.received) == 2  # the good webhook still got both alerts, with its own URL
    log = (tmp_path / "alerts.jsonl").read_text()
    assert [json.loads(line)["status"] for line in log.splitlines()] == ["sent", "sent", "duplicate"]
    for secret in ("GOODSECRET", "DEADSECRET", "QUERYSECRET", "/nowhere", "/slack/T000"):
        assert secret not in log and all(secret not in str(v) for v in d.failures.values())
    host = f"http://127.0.0.1:{rx.server.server_address[1]}/…"
    assert host in log and "404" in log  # what failed and where, without the secret
