"""PII detectors: tables of cases, checksums, recall on a labelled set, and nothing left in silver/gold."""

from __future__ import annotations

import ipaddress
import random
import string
from collections import Counter

import pytest

from features.pii import (
    STRUCTURED_KINDS,
    Redactor,
    format_counts,
    iban_ok,
    luhn_ok,
    parse_counts,
)


@pytest.mark.parametrize(
    ("text", "expected", "kinds"),
    [
        ("mail john.doe+tag@example.co.uk now", "mail [EMAIL] now", {"EMAIL": 1}),
        ("card 4111 1111 1111 1111.", "card [CREDIT_CARD].", {"CREDIT_CARD": 1}),
        ("card 4111-1111-1111-1112", "card 4111-1111-1111-1112", {}),  # Luhn fails: not a card
        ("pay to DE89 3704 0044 0532 0130 00 today", "pay to [IBAN] today", {"IBAN": 1}),
        ("iban GB82WEST12345698765432 IN FULL", "iban [IBAN] IN FULL", {"IBAN": 1}),
        ("iban GB82WEST12345698765433", "iban GB82WEST12345698765433", {}),  # mod-97 fails
        ("ssn 123-45-6789 ok", "ssn [US_SSN] ok", {"US_SSN": 1}),
        ("not ssn 000-12-3456", "not ssn 000-12-3456", {}),
        ("host 192.168.1.10.", "host [IPV4].", {"IPV4": 1}),
        ("version 1.2.3.4.5 is not an ip", "version 1.2.3.4.5 is not an ip", {}),
        ("v6 2001:db8::8a2e:370:7334 and fe80::1", "v6 [IPV6] and [IPV6]", {"IPV6": 2}),
        ("call (415) 555-2671 or +44 20 7946 0958", "call [PHONE] or [PHONE]", {"PHONE": 2}),
        ("It was released on 31 August 2018 at 10:30:00, 1,200 copies.", "It was released on 31 August 2018 at 10:30:00, 1,200 copies.", {}),
        ("", "", {}),
    ],
)
def test_redaction_table(text: str, expected: str, kinds: dict[str, int]) -> None:
    out, found = Redactor().redact(text)
    assert out == expected
    assert dict(found) == kinds


def test_redaction_is_idempotent_and_extra_patterns() -> None:
    r = Redactor({"EMPLOYEE_ID": r"\bEMP-\d{6}\b"})
    once, found = r.redact("EMP-123456 wrote to a@b.io")
    assert once == "[EMPLOYEE_ID] wrote to [EMAIL]" and found == Counter({"EMPLOYEE_ID": 1, "EMAIL": 1})
    assert r.redact(once) == (once, Counter())
    with pytest.raises(ValueError, match="UPPER_SNAKE"):
        Redactor({"bad name": "x"})


@pytest.mark.parametrize(("digits", "ok"), [("4111111111111111", True), ("4111111111111112", False), ("79927398713", True), ("0", True)])
def test_luhn(digits: str, ok: bool) -> None:
    assert luhn_ok(digits) is ok


@pytest.mark.parametrize(("iban", "ok"), [("DE89370400440532013000", True), ("GB82 WEST 1234 5698 7654 32", True), ("DE89370400440532013001", False), ("XX", False)])
def test_iban(iban: str, ok: bool) -> None:
    assert iban_ok(iban) is ok


def test_counts_round_trip() -> None:
    c = Counter({"PHONE": 2, "EMAIL": 1})
    assert format_counts(c) == "EMAIL=1;PHONE=2" and parse_counts(format_counts(c)) == c


# ---- labelled set: generated values of every structured kind in varied contexts -------------------
def _card(rng: random.Random) -> str:
    prefix, length = rng.choice([("4", 16), ("51", 16), ("37", 15), ("6011", 16), ("4", 13)])
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    check = next(d for d in string.digits if luhn_ok(body + d))
    num = body + check
    sep = rng.choice(["", " ", "-"])
    return sep.join(num[i : i + 4] for i in range(0, len(num), 4)) if sep else num


def _iban(rng: random.Random) -> str:
    country, n = rng.choice([("DE", 18), ("GB", 18), ("FR", 23), ("NL", 14), ("ES", 20)])
    bban = ("WEST" if country == "GB" else "") + "".join(rng.choice(string.digits) for _ in range(n - (4 if country == "GB" else 0)))
    for cd in range(100):
        cand = f"{country}{cd:02d}{bban}"
        if iban_ok(cand):
            break
    return " ".join(cand[i : i + 4] for i in range(0, len(cand), 4)) if rng.random() < 0.5 else cand


def _value(kind: str, rng: random.Random) -> str:
    if kind == "EMAIL":
        user = "".join(rng.choice(string.ascii_lowercase + "._") for _ in range(rng.randint(2, 10))).strip("._") or "x"
        return f"{user}{rng.randint(0, 99)}@{rng.choice(['example.com', 'mail.co.uk', 'uni-x.edu', 'corp.io'])}"
    if kind == "CREDIT_CARD":
        return _card(rng)
    if kind == "IBAN":
        return _iban(rng)
    if kind == "US_SSN":
        return f"{rng.randint(1, 665):03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"
    if kind == "IPV4":
        return ".".join(str(rng.randint(0, 255)) for _ in range(4))
    if kind == "IPV6":
        return str(ipaddress.IPv6Address(rng.getrandbits(128) & ~((1 << rng.choice([0, 16, 32, 48])) - 1)))
    a, b, c = rng.randint(200, 999), rng.randint(200, 999), rng.randint(0, 9999)
    return rng.choice([f"({a}) {b}-{c:04d}", f"{a}-{b}-{c:04d}", f"{a}.{b}.{c:04d}", f"+1 {a} {b} {c:04d}",
                       f"+44 20 {b} {c:04d}", f"+49 30 {b}{c:04d}", f"+33 1 {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)}"])


CONTEXTS = ["{v}", "contact: {v}.", "My {k} is {v}, thanks", "({v})", "see {v}\nnext line", "«{v}»", "value={v};"]


@pytest.fixture(scope="module")
def labelled() -> list[tuple[str, str, str]]:
    rng = random.Random(7)
    return [(kind, v, rng.choice(CONTEXTS).format(v=v, k=kind.lower())) for kind in STRUCTURED_KINDS for v in (_value(kind, rng) for _ in range(300))]


def test_recall_on_labelled_set_at_least_99_percent(labelled: list[tuple[str, str, str]]) -> None:
    r = Redactor()
    hits: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    for kind, value, text in labelled:
        out, found = r.redact(text)
        totals[kind] += 1
        hits[kind] += int(value not in out and found[kind] >= 1)
    recall = {k: hits[k] / totals[k] for k in totals}
    print("PII recall by kind:", recall)
    assert all(v >= 0.99 for v in recall.values()), recall


def test_few_false_positives_on_real_answers(qa_feedback_path) -> None:
    import json

    data = json.loads(qa_feedback_path.read_text())
    texts = [q[f"prediction {k}"] for q in data for k in (1, 2, 3, 4)] + [q["question"] for q in data]
    r = Redactor()
    flagged = sum(1 for t in texts if r.find(t))
    print(f"false positives: {flagged} of {len(texts)} real texts")
    assert flagged / len(texts) < 0.005


def test_bulk_redaction_equals_row_by_row(labelled: list[tuple[str, str, str]], qa_feedback_path) -> None:
    import json

    r = Redactor({"TICKET": r"TCK-\d{4}"})
    real = [q["prediction 1"] for q in json.loads(qa_feedback_path.read_text())[:200]]
    texts = [t for _, _, t in labelled] + real + [None, "", "TCK-1234 and a@b.io"]
    bulk, counts = r.redact_many(texts)
    single = [r.redact(t) for t in texts]
    assert bulk == [s[0] for s in single] and counts == [s[1] for s in single]


def test_ids_holding_pii_are_pseudonymized_in_silver_and_counted() -> None:
    """Issue 17: conversation, response and app ids are scanned like the text columns; an id with PII is replaced whole
    by a keyed pseudonym (same id -> same pseudonym, so grouping by response still holds), and counted in pii_counts."""
    from features.silver import transform_batch
    from tests.curation_fixtures import START, _event, to_bronze

    key = b"id-pii-test-key-0123456789abcdef"
    events = [
        _event(0, "thumbs", 0, START, prompt="q", response="a", value=1.0),  # plain ids
        _event(1, "thumbs", 0, START, prompt="q", response="a", value=1.0, conversation_id="chat-jane.doe@example.com",
               response_id="resp-for-jane.doe@example.com", app_id="app 555-123-4567"),
        _event(2, "rating", 2, START, prompt="q", response="b", value=4.0, conversation_id="chat-jane.doe@example.com",
               response_id="resp-for-jane.doe@example.com"),
    ]
    silver = transform_batch(to_bronze(events), key=key, redactor=Redactor()).to_pylist()
    assert {k: silver[0][k] for k in ("conversation_id", "response_id", "app_id")} == \
           {"conversation_id": "conv-0000", "response_id": "resp-0000-1", "app_id": "qa-app"}
    assert silver[0]["pii_counts"] == ""
    for row in silver[1:]:
        for col in ("conversation_id", "response_id"):
            assert row[col].startswith("pii_") and "example.com" not in row[col]
    assert silver[1]["response_id"] == silver[2]["response_id"] != silver[1]["conversation_id"]  # stable, distinct
    assert silver[1]["app_id"].startswith("pii_") and silver[2]["app_id"] == "qa-app"
    assert parse_counts(silver[1]["pii_counts"]) == Counter({"EMAIL": 2, "PHONE": 1})
    assert parse_counts(silver[2]["pii_counts"]) == Counter({"EMAIL": 2})
