"""PII detectors and redaction: typed placeholders (``[EMAIL]``) and counts by kind.

Structured kinds are found by a pattern and, where one exists, confirmed by a checksum or parser:
credit cards by Luhn, IBANs by ISO 7064 mod-97, IP addresses by ``ipaddress``. Extra kinds come from the
config as ``NAME -> regex``. Detectors run in a fixed order (most specific first) so a card number is not
half-eaten by the phone pattern. The same ``Redactor`` scans gold tables in the "no PII left" check.

With ``ner=True`` (the ``pii_ner`` setting) a second pass, ``features.pii_ner``, then redacts person names and
locations (``[PERSON]``, ``[LOCATION]``) with a Presidio + spaCy model over the text the first pass left; it needs
the ``ner`` extra, checked when the ``Redactor`` is built.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from features.pii_ner import NerPass

Validator = Callable[[str], bool]


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of a string of digits (credit cards)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_ok(candidate: str) -> bool:
    """ISO 13616 IBAN: 15..34 alphanumerics, mod-97 of the rearranged number equals 1."""
    s = candidate.replace(" ", "").upper()
    if not 15 <= len(s) <= 34 or not s[:2].isalpha() or not s[2:4].isdigit():
        return False
    moved = s[4:] + s[:4]
    try:
        return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1
    except ValueError:
        return False


def _card_ok(m: str) -> bool:
    digits = re.sub(r"\D", "", m)
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


def _ipv6_ok(m: str) -> bool:
    try:
        ipaddress.IPv6Address(m)
    except ValueError:
        return False
    return sum(c.isalnum() for c in m) >= 3


def _phone_ok(m: str) -> bool:
    return 7 <= sum(c.isdigit() for c in m) <= 15


@dataclass(frozen=True)
class Detector:
    """One kind of PII: a pattern, an optional validator of each match, and a cheap trigger test."""

    kind: str
    pattern: re.Pattern[str]
    validate: Validator | None = None
    trigger: Callable[[str], bool] = field(default=lambda text: True)
    prefilter: str | None = None  # a Rust-regex superset of the pattern, to skip rows in bulk (polars)

    @property
    def placeholder(self) -> str:
        return f"[{self.kind}]"


_HAS_DIGIT = re.compile(r"\d")


def _digits(text: str) -> bool:
    return _HAS_DIGIT.search(text) is not None


_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"

BUILTIN: tuple[Detector, ...] = (
    Detector("EMAIL", re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
             trigger=lambda t: "@" in t, prefilter="@"),
    Detector("IBAN", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b"), iban_ok, trigger=_digits, prefilter=r"[A-Z]{2}\d{2}"),
    Detector("CREDIT_CARD", re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d])"), _card_ok, trigger=_digits, prefilter=r"\d(?:[ -]?\d){12}"),
    Detector("US_SSN", re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}([- ])(?!00)\d{2}\1(?!0000)\d{4}(?![\d-])"), trigger=_digits, prefilter=r"\d{3}[- ]\d{2}[- ]\d{4}"),
    Detector("IPV6", re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{1,4}:|:){2,7}(?:[0-9A-Fa-f]{1,4}|:|" + _OCTET + r"(?:\." + _OCTET + r"){3})(?![\w:])"),
             _ipv6_ok, trigger=lambda t: "::" in t or t.count(":") >= 3, prefilter=r"[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:"),
    Detector("IPV4", re.compile(r"(?<![\d.])" + _OCTET + r"(?:\." + _OCTET + r"){3}(?!\d|\.\d)"), trigger=_digits, prefilter=r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}"),
    Detector("PHONE", re.compile(
        r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"
        r"|(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4})(?!\d)"), _phone_ok, trigger=_digits,
        prefilter=r"\+\d|\d{3}[ .-]\d{3}[ .-]\d{4}|\(\d{3}\) ?\d{3}[ .-]\d{4}"),
)
STRUCTURED_KINDS = tuple(d.kind for d in BUILTIN)


class Redactor:
    """Replaces every PII match with its placeholder and counts matches by kind."""

    def __init__(self, extra_patterns: Mapping[str, str] | None = None, *, ner: bool = False) -> None:
        extra = []
        for kind, regex in (extra_patterns or {}).items():
            if not re.fullmatch(r"[A-Z][A-Z0-9_]*", kind):
                raise ValueError(f"PII kind {kind!r} must be UPPER_SNAKE (it becomes the placeholder [{kind}])")
            extra.append(Detector(kind, re.compile(regex)))
        self.detectors: tuple[Detector, ...] = BUILTIN + tuple(extra)
        self.ner: NerPass | None = None
        if ner:
            from features.pii_ner import NerPass

            self.ner = NerPass.checked()

    def redact(self, text: str | None) -> tuple[str | None, Counter[str]]:
        found: Counter[str] = Counter()
        if not text:
            return text, found
        for det in self.detectors:
            if not det.trigger(text):
                continue
            text = det.pattern.sub(self._replacer(det, found), text)
        if self.ner is not None:
            text = self.ner.redact_many([text], [found])[0]
        return text, found

    def find(self, text: str | None) -> Counter[str]:
        """Counts by kind, without changing anything (the gold "no PII left" check)."""
        return self.redact(text)[1]

    @staticmethod
    def _replacer(det: Detector, found: Counter[str]) -> Callable[[re.Match[str]], str]:
        def repl(m: re.Match[str]) -> str:
            s = m.group(0)
            if det.validate is None or det.validate(s):
                found[det.kind] += 1
                return det.placeholder
            if det.kind == "IBAN":  # the pattern may have run into following capitals: try shorter prefixes
                for cut in range(len(s) - 1, 14, -1):
                    if s[cut - 1] != " " and iban_ok(s[:cut]):
                        found[det.kind] += 1
                        return det.placeholder + s[cut:]
            return s

        return repl

    def redact_many(self, texts: Iterable[str | None], *, ner: bool = True) -> tuple[list[str | None], list[Counter[str]]]:
        """Redact a column. Rows that no detector's prefilter matches (a bulk polars scan) are skipped by the structured
        pass. ``ner=False`` leaves out the NER pass where it is on (ids: a language model reads ``qa-app`` as a name)."""
        import polars as pl

        values = list(texts)
        s = pl.Series("t", values, dtype=pl.String)
        masks = []
        for det in self.detectors:
            if det.prefilter is None:
                masks.append(None)
            else:
                masks.append(s.str.contains(det.prefilter).fill_null(False).to_numpy())
        out: list[str | None] = list(values)
        counts: list[Counter[str]] = [Counter() for _ in values]
        import numpy as np

        any_mask = np.zeros(len(values), dtype=bool) if all(m is not None for m in masks) else np.ones(len(values), dtype=bool)
        for m in masks:
            if m is not None:
                any_mask |= m
        for n in np.flatnonzero(any_mask):
            text = values[n]
            if not text:
                continue
            found = counts[n]
            for det, m in zip(self.detectors, masks):
                if (m is None or m[n]) and det.trigger(text):
                    text = det.pattern.sub(self._replacer(det, found), text)
            out[n] = text
        if self.ner is not None and ner:  # every row: names have no cheap prefilter
            out = self.ner.redact_many(out, counts)
        return out, counts


def format_counts(counts: Counter[str]) -> str:
    """``Counter({'EMAIL': 2})`` -> ``"EMAIL=2"`` (sorted, ``;``-separated, empty if none)."""
    return ";".join(f"{k}={v}" for k, v in sorted(counts.items()) if v)


def parse_counts(text: str | None) -> Counter[str]:
    out: Counter[str] = Counter()
    for part in (text or "").split(";"):
        if part:
            k, _, v = part.partition("=")
            out[k] += int(v)
    return out
