"""The collector's parts without services: API keys and scopes, the loopback rule, body forms and limits,
reasons that never echo input, and the HTTP answers for a Kafka that failed (a fake publisher: the real broker
cases are in tests/test_collector.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from feedback.collector.app import create_app
from infra.api_keys import (
    Caller,
    bearer_token,
    is_loopback,
    key_entry,
    key_hash,
    new_key,
    parse_keys,
    require_keys_beyond_loopback,
)
from feedback.collector.publisher import KafkaUnavailable, bootstrap_reachable
from feedback.collector.verdicts import BodyError, Publishable, Rejected, check_events, split_body
from feedback.streams import get_stream
from infra.errors import ConfigError
from infra.settings import Settings, load_settings
from tests.conftest import free_port
from tests.test_feedback_corpus import CORPUS, dumps, valid_event

MARK = "Zq8marker"  # put into bad events; no answer may contain it


# ---- API keys ------------------------------------------------------------------------------------------------
def test_a_new_key_is_random_and_its_entry_holds_only_the_hash() -> None:
    a, b = new_key(), new_key()
    assert a != b and a.startswith("llk_") and len(a) >= 40
    entry = key_entry(a, "web")
    assert entry == f"sha256:{key_hash(a)}@web" and a not in entry
    assert parse_keys(entry).caller(f"Bearer {a}") == Caller(frozenset({"web"}))


@pytest.mark.parametrize(
    ("entries", "key", "expected"),
    [
        (["K"], "K", Caller(None)),  # unscoped: any app
        (["K@a"], "K", Caller(frozenset({"a"}))),
        (["K@a", "K@b"], "K", Caller(frozenset({"a", "b"}))),  # one key, two apps
        (["K@a", "K"], "K", Caller(None)),  # unscoped anywhere wins
        (["K", "K@a"], "K", Caller(None)),
        (["K@a", "L@b"], "L", Caller(frozenset({"b"}))),
        (["K@a"], "wrong", None),
        (["K@a"], None, None),
    ],
)
def test_keys_and_their_scopes(entries: list[str], key: str | None, expected: Caller | None) -> None:
    def entry(e: str) -> str:
        k, _, app = e.partition("@")
        return key_entry(f"secret-{k}", app or None)

    keys = parse_keys(" , ".join(entry(e) for e in entries))
    header = None if key is None else f"Bearer secret-{key}"
    assert keys.caller(header) == expected


def test_without_keys_every_request_is_an_unscoped_caller() -> None:
    keys = parse_keys("")
    assert not keys
    assert keys.caller(None) == Caller(None) and keys.caller("Bearer anything") == Caller(None)


@pytest.mark.parametrize(("header", "token"), [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None),
                                               ("Bearer", None), ("", None), (None, None)])
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize("bad", ["abc", "sha256:xyz", "sha256:" + "A" * 64, "md5:" + "a" * 32, "sha256:" + "a" * 63,
                                 "sha256:" + "a" * 64 + "@"])
def test_a_malformed_entry_is_a_config_error_naming_its_position(bad: str) -> None:
    good = key_entry("k")
    with pytest.raises(ConfigError, match="entry 2 of 2") as exc:
        parse_keys(f"{good},{bad}")
    assert "new-key" in (exc.value.hint or "")


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.0.0.2", False), ("::1", True), ("[::1]", True),
                                                ("localhost", True), ("0.0.0.0", False), ("::", False),
                                                ("10.1.2.3", False), ("collector.example.com", False)])
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_keys_are_required_beyond_loopback() -> None:
    require_keys_beyond_loopback("127.0.0.1", parse_keys(""))
    require_keys_beyond_loopback("0.0.0.0", parse_keys(key_entry("k")))
    with pytest.raises(ConfigError, match="beyond loopback") as exc:
        require_keys_beyond_loopback("0.0.0.0", parse_keys(""))
    assert "lakeloop collector new-key" in (exc.value.hint or "")


def test_the_app_refuses_to_exist_beyond_loopback_without_keys(tmp_path: Path) -> None:
    s = load_settings(home=tmp_path, collector_host="0.0.0.0")
    with pytest.raises(ConfigError, match="beyond loopback"):
        create_app(s, publisher=FakePublisher())
    create_app(s.model_copy(update={"collector_api_keys": key_entry("k")}), publisher=FakePublisher())


# ---- body forms ------------------------------------------------------------------------------------------------
EV = dumps(valid_event(1))


@pytest.mark.parametrize(
    ("body", "events"),
    [
        (EV, [EV]),
        (b"\n  " + EV + b"\n", [EV]),
        (b"[" + EV + b", " + EV + b"]", [EV, EV]),
        (b'{"events": [' + EV + b"]}", [EV]),
        (b'{"events": [1, "x"]}', [b"1", b'"x"']),  # each judged on its own
        (b'{"events": [], "other": 1}', [b'{"events": [], "other": 1}']),  # not the batch form: one (bad) event
        (b"42", [b"42"]),
    ],
)
def test_body_forms(body: bytes, events: list[bytes]) -> None:
    assert split_body(body, max_events=10) == events


@pytest.mark.parametrize(("body", "status"), [(b"", 400), (b"  \n", 400), (b"[]", 400), (b'{"events": []}', 400),
                                              (b"[1,", 400), (b"[NaN]", 400), (b"[1,2,3]", 413)])
def test_bodies_refused_as_a_whole(body: bytes, status: int) -> None:
    with pytest.raises(BodyError) as exc:
        split_body(body, max_events=2)
    assert exc.value.status == status


# ---- verdicts: the ingestor's check, reasons without input ------------------------------------------------------
@pytest.fixture()
def stream(tmp_path: Path):
    return get_stream(load_settings(home=tmp_path))


def _bad_events() -> list[bytes]:
    def ev(**kw: object) -> bytes:
        return dumps(valid_event(3, **kw))

    return [
        ev(event_type=MARK), ev(value=MARK), ev(value=5), ev(metadata={MARK: 1}), ev(metadata={MARK: "a\x00b"}),
        ev(occurred_at="1999-01-01T00:00:00+00:00"), ev(occurred_at="2999-01-01T00:00:00+00:00"),
        ev(occurred_at=MARK), ev(user_id=MARK * 40), ev(prompt=f"{MARK}\x00"), ev(event_id=None),
        dumps(valid_event(3))[:-1] + f', "{MARK}": 1, "{MARK}": 2}}'.encode(),  # duplicate key
        dumps(valid_event(3))[:-1] + b', "x": 1e400}', f'"{MARK}"'.encode(), f'["{MARK}"]'.encode(),
        f"{MARK}".encode(), b"\xff" + MARK.encode(),
    ]


@pytest.mark.parametrize("raw", _bad_events() + [b.raw for b in CORPUS], ids=lambda r: f"{len(r)}B")
def test_a_rejected_event_is_what_the_ingestor_refuses_and_its_reason_echoes_nothing(stream, raw: bytes) -> None:
    (verdict,) = check_events(stream, [raw], Caller())
    ingestor = stream.to_row(raw)
    assert isinstance(verdict, Rejected) and not isinstance(ingestor, tuple)
    assert verdict.stage == ingestor.stage
    assert MARK not in verdict.reason and "1e400" not in verdict.reason
    assert verdict.reason and len(verdict.reason) < 400


def test_a_valid_event_is_published_byte_for_byte_keyed_by_its_conversation(stream) -> None:
    raw = b'{"event_id":"e1",  "event_type":"thumbs","occurred_at":"2026-01-05T10:00:00Z","app_id":"a","user_id":"u",' \
          b'"conversation_id":"c9","response_id":"r","model_name":"m","model_version":"1","prompt":"p","response":"r",' \
          b'"value":1,"extra":{"kept":true}}'
    assert check_events(stream, [raw], Caller()) == [Publishable("e1", b"c9", raw)]


def test_a_scoped_key_may_send_only_its_apps_events(stream) -> None:
    mine, other = dumps(valid_event(1, app_id="mine")), dumps(valid_event(2, app_id="other"))
    verdicts = check_events(stream, [mine, other], Caller(frozenset({"mine"})))
    assert isinstance(verdicts[0], Publishable)
    assert isinstance(verdicts[1], Rejected) and verdicts[1].stage == "forbidden" and "other" not in verdicts[1].reason


# ---- the HTTP answers around a failing Kafka (fake publisher) -----------------------------------------------
class FakePublisher:
    def __init__(self, *, down: bool = False, fail: Sequence[int] = ()) -> None:
        self.down, self.fail, self.published = down, set(fail), []

    async def publish(self, events: Sequence[Publishable]) -> list[str | None]:
        if self.down:
            raise KafkaUnavailable("Kafka at x does not answer", hint="retry later")
        self.published += [e.event_id for i, e in enumerate(events) if i not in self.fail]
        return ["not acknowledged" if i in self.fail else None for i in range(len(events))]

    def unready(self) -> str | None:
        return "Kafka at x does not answer" if self.down else None

    def start(self) -> None: ...

    def close(self) -> None: ...


def _client(tmp_path: Path, publisher: FakePublisher, **overrides: object) -> TestClient:
    s: Settings = load_settings(home=tmp_path, collector_port=free_port(), **overrides)
    return TestClient(create_app(s, publisher=publisher))


def test_kafka_down_is_503_with_retry_after_and_nothing_sent(tmp_path: Path) -> None:
    pub = FakePublisher(down=True)
    with _client(tmp_path, pub) as http:
        r = http.post("/v1/feedback", content=b"[" + dumps(valid_event(1)) + b"," + dumps(valid_event(2, value=7)) + b"]")
        assert r.status_code == 503 and r.headers["retry-after"] == "2"
        body = r.json()
        assert [e["status"] for e in body["events"]] == ["unavailable", "rejected"]
        assert (body["accepted"], body["rejected"], body["unavailable"]) == (0, 1, 1)
        ready = http.get("/readyz")
        assert ready.status_code == 503 and ready.headers["retry-after"] == "2"
        assert http.get("/healthz").status_code == 200
    assert pub.published == []


def test_a_failure_under_the_request_says_which_events_kafka_has(tmp_path: Path) -> None:
    pub = FakePublisher(fail=[1])
    with _client(tmp_path, pub) as http:
        r = http.post("/v1/feedback", json=[valid_event(i) for i in range(3)])
    assert r.status_code == 503 and r.headers["retry-after"] == "2"
    assert [e["status"] for e in r.json()["events"]] == ["accepted", "unavailable", "accepted"]
    assert pub.published == ["evt-0000000", "evt-0000002"]


def test_cors_is_off_by_default_and_allows_only_configured_origins(tmp_path: Path) -> None:
    preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    with _client(tmp_path, FakePublisher()) as http:
        r = http.options("/v1/feedback", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
    with _client(tmp_path, FakePublisher(), collector_cors_origins="https://app.example.com") as http:
        r = http.options("/v1/feedback", headers=preflight)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example.com"
        r = http.options("/v1/feedback", headers={**preflight, "Origin": "https://evil.example.com"})
        assert r.headers.get("access-control-allow-origin") != "https://evil.example.com"


def test_bootstrap_reachable_needs_a_listening_port() -> None:
    import socket

    assert not bootstrap_reachable(f"127.0.0.1:{free_port()}")
    assert not bootstrap_reachable("no-port-here")
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert bootstrap_reachable(f"127.0.0.1:{free_port()}, 127.0.0.1:{port}")
