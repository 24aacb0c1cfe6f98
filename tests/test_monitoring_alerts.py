"""Alerts reach a real local HTTP receiver in JSON, Slack and Teams shapes; duplicates and storms are held."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.errors import ConfigError
from monitors.alerts import Alert, AlertPolicy, LogFileChannel, Notifier, WebhookChannel, parse_webhooks, payload
from monitors.routing import bucket, route
from monitors.streak import judge_streak, streak_length
from tests.monitoring_helpers import Receiver

ALERT = Alert(
    "rollback", "canary v7 rolled back: agrees with users less", "critical",
    details={"canary_agreement": 0.2, "champion_agreement": 0.9},
    links={"canary_model": "http://mlflow/#/models/m/versions/7", "dagster_run": "http://dagster/runs/abc"},
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def notifier(tmp_path: Path, channels, clock, policy=AlertPolicy(dedup_seconds=60, storm_limit=3, storm_seconds=100)) -> Notifier:
    return Notifier(channels, log=LogFileChannel(tmp_path / "alerts.jsonl"), state_path=tmp_path / "state.json", policy=policy, clock=clock)


def test_three_webhook_flavours_arrive_with_summary_and_links(tmp_path: Path) -> None:
    with Receiver() as rx:
        chans = [WebhookChannel(rx.url("/json"), "json"), WebhookChannel(rx.url("/slack"), "slack"), WebhookChannel(rx.url("/teams"), "teams")]
        d = notifier(tmp_path, chans, Clock()).notify(ALERT)
        assert d.delivered
        got = dict(rx.received)
    assert got["/json"]["kind"] == "rollback" and got["/json"]["links"]["dagster_run"] == "http://dagster/runs/abc"
    assert "rolled back" in got["/slack"]["text"]
    buttons = [e for b in got["/slack"]["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert [b["url"] for b in buttons] == list(ALERT.links.values())
    card = got["/teams"]["attachments"][0]["content"]
    assert card["type"] == "AdaptiveCard" and [a["url"] for a in card["actions"]] == list(ALERT.links.values())
    log = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert [e["status"] for e in log] == ["sent"] and log[0]["failures"] == {}


def test_duplicates_are_held_until_the_dedup_window_passes(tmp_path: Path) -> None:
    clock = Clock()
    with Receiver() as rx:
        n = notifier(tmp_path, [WebhookChannel(rx.url(), "json")], clock)
        assert n.notify(ALERT).status == "sent"
        clock.now += 30
        assert n.notify(ALERT).status == "duplicate"
        clock.now += 31
        assert n.notify(ALERT).status == "sent"
        assert len(rx.received) == 2


def test_storm_control_caps_and_reports_suppressed_count(tmp_path: Path) -> None:
    clock = Clock()
    with Receiver() as rx:
        n = notifier(tmp_path, [WebhookChannel(rx.url(), "json")], clock)
        statuses = [n.notify(Alert("drift", f"alert {i}")).status for i in range(6)]
        assert statuses == ["sent"] * 3 + ["storm_suppressed"] * 3
        clock.now += 101
        assert n.notify(Alert("drift", "after the storm")).status == "sent"
        assert len(rx.received) == 4
        assert rx.received[-1][1]["suppressed"] == 3 and "3 more alerts were suppressed" in rx.received[-1][1]["summary"]


def test_a_broken_channel_is_recorded_and_does_not_silence_others(tmp_path: Path) -> None:
    with Receiver() as rx:
        dead = WebhookChannel("http://127.0.0.1:9/nothing", "json", timeout=0.5, retries=0)
        d = notifier(tmp_path, [dead, WebhookChannel(rx.url(), "slack")], Clock()).notify(ALERT)
        assert d.status == "sent" and not d.delivered and list(d.failures) == [dead.name]
        assert len(rx.received) == 1
    entry = json.loads((tmp_path / "alerts.jsonl").read_text().splitlines()[-1])
    assert dead.name in entry["failures"]


def test_state_is_shared_between_notifier_instances(tmp_path: Path) -> None:
    clock = Clock()
    assert notifier(tmp_path, [], clock).notify(ALERT).status == "sent"
    assert notifier(tmp_path, [], clock).notify(ALERT).status == "duplicate"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("", []), ("http://a/x", [("json", "http://a/x")]), ("slack+https://h/s, teams+http://t/x", [("slack", "https://h/s"), ("teams", "http://t/x")])],
)
def test_parse_webhooks(spec: str, expected) -> None:
    assert [(c.fmt, c.url) for c in parse_webhooks(spec)] == expected


def test_parse_webhooks_rejects_non_urls() -> None:
    with pytest.raises(ConfigError):
        parse_webhooks("slack+hooks.example")


def test_payload_shapes_are_json_serialisable() -> None:
    for fmt in ("json", "slack", "teams"):
        json.dumps(payload(ALERT, fmt, suppressed=2))


@pytest.mark.parametrize(
    ("history", "required", "length", "action"),
    [
        ([], 3, 0, "none"),
        ([True, True], 3, 2, "none"),
        ([True, True, True], 3, 3, "alert"),
        ([True, True, True, True], 3, 4, "ongoing"),
        ([True, True, True, False], 3, 0, "none"),
        ([False, True], 1, 1, "alert"),
        ([True, False, True, True], 2, 2, "alert"),
    ],
)
def test_streak(history, required, length, action) -> None:
    v = judge_streak(history, required=required)
    assert (v.length, v.action) == (length, action)
    assert streak_length(history) == length


def test_routing_is_sticky_and_monotonic_in_share() -> None:
    ids = [f"conv-{i}" for i in range(2000)]
    at10 = {c for c in ids if route(c, 0.1, has_canary=True) == "canary"}
    at50 = {c for c in ids if route(c, 0.5, has_canary=True) == "canary"}
    assert at10 <= at50  # raising the share never moves a conversation back
    assert 0.07 < len(at10) / len(ids) < 0.13 and 0.45 < len(at50) / len(ids) < 0.55
    assert all(route(c, 0.5, has_canary=False) == "champion" for c in ids[:50])
    assert bucket("conv-1") == bucket("conv-1")
