"""The optional NER pass (issue 17): names and places redacted, the setting reaches silver, a clear error without the
extra, and no model download. Needs the `ner` extra, which `make test` installs."""

from __future__ import annotations

import importlib.util
from collections import Counter

import pytest

from features import pii_ner
from features.pii import Redactor
from infra.errors import MissingDependencyError


@pytest.fixture(scope="module")
def ner() -> Redactor:
    return Redactor(ner=True)


@pytest.mark.parametrize(
    ("text", "expected", "kinds"),
    [
        ("Hi, my name is Maria Garcia and I need help with my order.",
         "Hi, my name is [PERSON] and I need help with my order.", {"PERSON": 1}),
        ("Please send the replacement to 221 Baker Street.", "Please send the replacement to [LOCATION].", {"LOCATION": 1}),
        ("My manager James Smith moved to Chicago last year.", "My manager [PERSON] moved to [LOCATION] last year.",
         {"PERSON": 1, "LOCATION": 1}),
        ("Please write to Maria Garcia at maria.garcia@example.com or call (415) 555-2671.",
         "Please write to [PERSON] at [EMAIL] or call [PHONE].", {"PERSON": 1, "EMAIL": 1, "PHONE": 1}),
        ("The answer about SQL joins was helpful, thanks.", "The answer about SQL joins was helpful, thanks.", {}),
        ("", "", {}),
    ],
)
def test_ner_pass_redacts_names_and_places(ner: Redactor, text: str, expected: str, kinds: dict[str, int]) -> None:
    out, found = ner.redact(text)
    assert out == expected
    assert dict(found) == kinds


def test_ner_pass_leaves_the_structured_placeholders_alone_and_bulk_equals_row_by_row(ner: Redactor) -> None:
    texts = ["Ship to James Smith, 12 Oak Avenue, Boston.", None, "", "Version 2.3.1 fixed the crash.",
             "[EMAIL] wrote from [PHONE] about the [IBAN]", "Thanks Aisha Khan! a@b.io"]
    bulk, counts = ner.redact_many(texts)
    single = [ner.redact(t) for t in texts]
    assert bulk == [s[0] for s in single] and counts == [s[1] for s in single]
    assert bulk[0] == "Ship to [PERSON], [LOCATION], [LOCATION]." and counts[0] == Counter({"PERSON": 1, "LOCATION": 2})
    assert bulk[4] == texts[4] and not counts[4]
    assert bulk[5] == "Thanks [PERSON]! [EMAIL]"


def test_the_setting_turns_the_pass_on_in_silver(tmp_path, monkeypatch) -> None:
    """LAKELOOP_PII_NER=on -> settings -> the curation config -> Redactor(ner=True) in transform_batch's silver rows."""
    from features import lake
    from features import pipeline_local as local
    from infra.settings import load_settings
    from infra.tables import table_uri
    from orchestration.assets.curation.resources import CurationResource
    from tests.curation_fixtures import START, _event, write_bronze

    events = [_event(0, "thumbs", 0, START, prompt="I am Maria Garcia from Madrid, is this right?", response="a fine answer",
                     value=1.0, comment="mail me: maria@example.com"),
              _event(1, "thumbs", 1, START, prompt="What is SQL?", response="A query language.", value=0.0)]

    def curate(home: str) -> tuple[Counter[str], list[str], list[str]]:
        settings = load_settings(home=tmp_path / home, autopilot=False)
        write_bronze(table_uri(settings, "bronze/feedback_events"), events)
        rep = local.curate_silver(settings, START, cfg=CurationResource().config(settings), key=b"ner-test-key-0123456789abcdef")
        silver = lake.read(table_uri(settings, "silver/feedback")).sort("event_id")
        return rep.pii, silver["prompt"].to_list(), silver["pii_counts"].to_list()

    assert curate("off") == (Counter({"EMAIL": 1}), [events[0]["prompt"], "What is SQL?"], ["EMAIL=1", ""])  # default
    monkeypatch.setenv("LAKELOOP_PII_NER", "on")
    assert curate("on") == (Counter({"PERSON": 1, "LOCATION": 1, "EMAIL": 1}),
                            ["I am [PERSON] from [LOCATION], is this right?", "What is SQL?"], ["EMAIL=1;LOCATION=1;PERSON=1", ""])


def test_missing_extra_is_a_clear_error(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(pii_ner.importlib.util, "find_spec", lambda name, *a: None if name == "presidio_analyzer" else real(name, *a))
    with pytest.raises(MissingDependencyError, match="presidio_analyzer is not installed") as err:
        Redactor(ner=True)
    assert err.value.hint is not None and "pip install 'lakeloop[ner]'" in err.value.hint
    assert Redactor().find("Maria Garcia") == Counter()  # the default pass needs nothing of the extra


def test_the_model_is_never_downloaded(monkeypatch) -> None:
    """Presidio downloads a spaCy model it does not find as a distribution of that name; ours comes from the installed
    package and the engine is built without that step."""
    import spacy.cli

    def no_download(*a: object, **k: object) -> None:
        raise AssertionError("a spaCy model download was attempted")

    monkeypatch.setattr(spacy.cli, "download", no_download)
    monkeypatch.setattr(pii_ner, "_analyzer", None)
    assert pii_ner.spans("Olga Ivanova lives in Berlin.") == [(0, 12, "PERSON"), (22, 28, "LOCATION")]


def test_benchmark_scores_tokens_by_alignment() -> None:
    """bench.bench_pii's token-level scoring, on a hand-checked case: what the published figures rest on."""
    from bench.bench_pii import fill, predicted_labels, score, token_labels

    text, gold = fill("Call {person} on {phone} now, {first}.", {"person": "Mateo Bello", "phone": "(415) 555-2671", "first": "Ana"})
    assert text == "Call Mateo Bello on (415) 555-2671 now, Ana." and gold == [(5, 16, "PERSON"), (20, 34, "PHONE"), (40, 43, "PERSON")]
    pred = predicted_labels(text, "Call [PERSON] on [PHONE] [LOCATION] [PERSON].")
    assert token_labels(text, gold) == [None, "PERSON", "PERSON", None, "PHONE", "PHONE", None, "PERSON"]
    assert pred == [None, "PERSON", "PERSON", None, "PHONE", "PHONE", "LOCATION", "PERSON"]
    s = score([token_labels(text, gold)], [pred])
    assert s["ALL"] == {"precision": round(5 / 6, 4), "recall": 1.0, "gold_tokens": 5, "redacted_tokens": 6}
    assert s["LOCATION"]["precision"] == 0.0 and s["PERSON"] == {"precision": 1.0, "recall": 1.0, "gold_tokens": 3, "redacted_tokens": 3}
