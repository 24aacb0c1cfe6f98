"""PII detection quality and speed: `python -m bench.bench_pii` (needs the `ner` extra).

Three passes over the same texts in one run: the default pass (``Redactor()``: regex + checksums), the NER pass
alone (``features.pii_ner``: Presidio + spaCy ``en_core_web_sm`` + a street-address pattern) and both
(``Redactor(ner=True)``, what ``pii_ner`` on does). Writes bench/results/pii.json (docs/design/curation.md quotes it).

**Labelled set** (``labelled_set``, seeded, built here): 400 short feedback-like texts from 24 templates with
person names, street addresses, cities, emails, phones, card numbers and IPv4 addresses inserted at known spans,
plus 100 texts without PII (capitalized product names, weekdays, versions, numbers). Addresses and cities are
labelled ``LOCATION`` (the NER pass's kind for both).

**Scoring is token-level**: texts are split on whitespace; a token is gold PII of kind K when it overlaps a
labelled span of kind K, and predicted when the pass changed it (found by aligning the token sequences before and
after redaction; its predicted kind is the placeholder's). Recall of kind K: gold-K tokens redacted, by any
placeholder, out of all gold-K tokens. Precision of kind K: tokens a pass redacted as K that are gold PII (any
kind) out of all it redacted as K. Overall: the same over every kind.

**Ordinary answers** (unlabelled): the qa_feedback answers (``prediction 1`` of the 500 questions, read at run
time from the shared data, never copied) talk about real people and places from Wikipedia ("Bloom is the second
studio album by Australian singer Troye Sivan"). They are not labelled: a public figure in an answer is not PII of
a user, yet the NER pass cannot tell. They measure what each pass takes out of ordinary answer text (share of
answers changed, tokens redacted per 1,000) and the speed on longer texts.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from collections import Counter
from difflib import SequenceMatcher
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LAKELOOP_SHARED_DATA", REPO.parent / "shared" / "data" / "qa_feedback")) / "dev_feedback.json"
RESULTS = REPO / "bench" / "results" / "pii.json"
SEED = 17

FIRST = ["James", "Maria", "Wei", "Aisha", "Olga", "Carlos", "Priya", "Kwame", "Sofia", "Hiroshi", "Fatima", "Liam",
         "Chloe", "Mateo", "Ingrid", "Tunde", "Mei", "Ahmed", "Elena", "Noah", "Zainab", "Lucas", "Hannah", "Dmitri",
         "Amara", "Jonas", "Isabel", "Ravi", "Emma", "Kenji"]
LAST = ["Smith", "Garcia", "Chen", "Khan", "Ivanova", "Rodriguez", "Patel", "Mensah", "Rossi", "Tanaka", "Haddad",
        "Murphy", "Dubois", "Fernandez", "Larsen", "Okafor", "Wong", "Hassan", "Popescu", "Miller", "Bello", "Silva",
        "Schmidt", "Volkov", "Nwosu", "Berg", "Moreno", "Iyer", "Johnson", "Sato"]
CITIES = ["London", "Chicago", "Madrid", "Toronto", "Lagos", "Mumbai", "Berlin", "Sydney", "Osaka", "Nairobi",
          "Lyon", "Boston", "Dublin", "Seattle", "Lisbon", "Warsaw", "Denver", "Manchester", "Austin", "Oslo"]
STREETS = ["Baker", "Maple", "Oak", "Elm", "High", "Church", "Park", "Cedar", "Victoria", "Mill", "Lake", "Hill",
           "Station", "Green", "King"]
SUFFIXES = ["Street", "Avenue", "Road", "Lane", "Drive", "St", "Ave", "Rd", "Boulevard", "Way"]
TOPICS = ["photosynthesis", "compound interest", "Kubernetes pods", "the Krebs cycle", "Python decorators",
          "Excel pivot tables", "the Bluetooth settings", "SQL joins", "the tax form", "React hooks", "Git rebase",
          "the Windows update", "sourdough starters", "Java generics", "the iPhone battery"]

POSITIVE = [
    "Hi, my name is {person} and I need help with my order.",
    "Please send the replacement to {address}.",
    "{person} from the {city} office asked about this answer.",
    "You can reach me at {email} or {phone}.",
    "I moved to {city} last year, can you recommend a bank?",
    "My manager {person} said the summary was wrong.",
    "Ship to {person}, {address}, {city}.",
    "The login from {ip} was not me, and my card {card} was charged.",
    "Thanks {first}! That fixed it.",
    "Write a short bio for {person}, a nurse living in {city}.",
    "My address is {address}, {city} and my phone is {phone}.",
    "Dear {person}, your appointment is confirmed for Tuesday.",
    "I, {person}, confirm the payment with card {card}.",
    "Forward this to {email}, cc {person}.",
    "We met {person} at the cafe near {address}.",
    "Is it colder in {city} than in {city2} in winter?",
    "my name is {person_lower} and this answer is wrong",
    "Contact: {person} <{email}>",
    "The parcel for {person} is stuck in {city}; the label says {address}.",
    "{first} wrote: the answer about {topic} was useless.",
    "Can you draft an email to {person} about the late invoice?",
    "I live at {address} and the noise at night is terrible.",
    "Call {person} on {phone} before noon.",
    "The answer said {city} but my sister {first} lives in {city2}.",
]
NEGATIVE = [
    "The answer about {topic} was helpful, thanks.",
    "Can you explain {topic} in simpler words?",
    "This response is wrong: the part on {topic} repeats itself.",
    "Rate 4 out of 5. Clear and short.",
    "Version 2.3.1 fixed the crash on startup.",
    "Please summarize the article in 3 bullet points.",
    "The code fails with KeyError on line 12 when I run it on Monday data.",
    "The model confused Celsius and Fahrenheit in the last step.",
    "I prefer the second answer, it cites the sources.",
    "Too long. I asked for 100 words about {topic}.",
]
KIND_OF = {"person": "PERSON", "person_lower": "PERSON", "first": "PERSON", "address": "LOCATION", "city": "LOCATION",
           "city2": "LOCATION", "email": "EMAIL", "phone": "PHONE", "card": "CREDIT_CARD", "ip": "IPV4"}
_SLOT = re.compile(r"\{(\w+)\}")


def _card(rng: random.Random) -> str:
    from features.pii import luhn_ok

    body = "4" + "".join(rng.choice("0123456789") for _ in range(14))
    num = body + next(d for d in "0123456789" if luhn_ok(body + d))
    return " ".join(num[i:i + 4] for i in range(0, 16, 4))


def _values(rng: random.Random) -> dict[str, str]:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    city, city2 = rng.sample(CITIES, 2)
    a, b, c = rng.randint(200, 989), rng.randint(200, 989), rng.randint(0, 9999)
    return {"person": f"{first} {last}", "person_lower": f"{first} {last}".lower(), "first": first,
            "address": f"{rng.randint(1, 999)} {rng.choice(STREETS)} {rng.choice(SUFFIXES)}", "city": city, "city2": city2,
            "email": f"{first.lower()}.{last.lower()}{rng.randint(1, 99)}@{rng.choice(['example.com', 'mail.co.uk', 'corp.io'])}",
            "phone": rng.choice([f"({a}) {b}-{c:04d}", f"+1 {a} {b} {c:04d}", f"+44 20 {b} {c:04d}"]),
            "card": _card(rng), "ip": ".".join(str(rng.randint(1, 254)) for _ in range(4)), "topic": rng.choice(TOPICS)}


def fill(template: str, values: dict[str, str]) -> tuple[str, list[tuple[int, int, str]]]:
    """The template with its slots filled, and the ``(start, end, kind)`` of each PII slot."""
    parts, gold, at, pos = [], [], 0, 0
    for m in _SLOT.finditer(template):
        parts.append(template[at:m.start()])
        pos += m.start() - at
        value = values[m.group(1)]
        if m.group(1) in KIND_OF:
            gold.append((pos, pos + len(value), KIND_OF[m.group(1)]))
        parts.append(value)
        pos += len(value)
        at = m.end()
    parts.append(template[at:])
    return "".join(parts), gold


def labelled_set(n_positive: int = 400, n_negative: int = 100, seed: int = SEED) -> list[tuple[str, list[tuple[int, int, str]]]]:
    rng = random.Random(seed)
    out = [fill(POSITIVE[i % len(POSITIVE)], _values(rng)) for i in range(n_positive)]
    out += [fill(NEGATIVE[i % len(NEGATIVE)], _values(rng)) for i in range(n_negative)]
    rng.shuffle(out)
    return out


def token_labels(text: str, gold: list[tuple[int, int, str]]) -> list[str | None]:
    return [next((k for s, e, k in gold if m.start() < e and s < m.end()), None) for m in re.finditer(r"\S+", text)]


def predicted_labels(text: str, redacted: str) -> list[str | None]:
    """Per whitespace token of ``text``: the kind of the placeholder that replaced it, None if it was kept."""
    a, b = text.split(), redacted.split()
    out: list[str | None] = [None] * len(a)
    for op, i1, i2, j1, j2 in SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op in ("replace", "delete"):
            kinds = re.findall(r"\[([A-Z][A-Z0-9_]*)\]", " ".join(b[j1:j2])) or ["?"]
            for i in range(i1, i2):  # several placeholders in one block: spread them over its tokens in order
                out[i] = kinds[min(len(kinds) - 1, (i - i1) * len(kinds) // (i2 - i1))]
    return out


def score(gold: list[list[str | None]], pred: list[list[str | None]]) -> dict[str, dict[str, float | int | None]]:
    """Token-level precision and recall per kind and overall (see the module docstring)."""
    g_n, g_hit, p_n, p_hit = Counter(), Counter(), Counter(), Counter()
    for gs, ps in zip(gold, pred):
        for g, p in zip(gs, ps):
            if g:
                g_n[g] += 1
                g_n["ALL"] += 1
                g_hit[g] += p is not None
                g_hit["ALL"] += p is not None
            if p:
                p_n[p] += 1
                p_n["ALL"] += 1
                p_hit[p] += g is not None
                p_hit["ALL"] += g is not None
    return {k: {"precision": round(p_hit[k] / p_n[k], 4) if p_n[k] else None,
                "recall": round(g_hit[k] / g_n[k], 4) if g_n[k] else None,
                "gold_tokens": g_n[k], "redacted_tokens": p_n[k]} for k in sorted(set(g_n) | set(p_n))}


def passes() -> dict[str, object]:
    """name -> a function from texts to redacted texts."""
    from features.pii import Redactor
    from features.pii_ner import NerPass

    default, both, ner = Redactor(), Redactor(ner=True), NerPass.checked()
    return {"default": lambda ts: default.redact_many(ts)[0],
            "ner": lambda ts: ner.redact_many(list(ts), [Counter() for _ in ts]),
            "default+ner": lambda ts: both.redact_many(ts)[0]}


def timed(fn, texts: list[str], *, repeats: int) -> tuple[list[str], float]:
    """Redacted texts and the best texts/second of ``repeats`` runs."""
    best, out = 0.0, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(texts)
        best = max(best, len(texts) / (time.perf_counter() - t0))
    return out, best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--answers", type=int, default=500, help="qa_feedback answers to scan (default all 500)")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from features import pii_ner

    t0 = time.perf_counter()
    pii_ner.analyzer()
    load_s = time.perf_counter() - t0
    data = labelled_set()
    texts = [t for t, _ in data]
    gold = [token_labels(t, g) for t, g in data]
    negatives = [i for i, (_, g) in enumerate(data) if not g]
    answers = [q["prediction 1"] for q in json.loads(DATA.read_text())][: args.answers]
    answer_tokens = sum(len(a.split()) for a in answers)
    results: dict[str, dict] = {}
    for name, fn in passes().items():
        fn(texts[:20])  # warm-up
        out, rate = timed(fn, texts, repeats=args.repeats)
        pred = [predicted_labels(t, o) for t, o in zip(texts, out)]
        a_out, a_rate = timed(fn, answers, repeats=args.repeats)
        a_pred = [predicted_labels(t, o) for t, o in zip(answers, a_out)]
        results[name] = {"scores": score(gold, pred), "texts_per_s": round(rate, 1), "answer_texts_per_s": round(a_rate, 1),
                         "negatives_changed": round(sum(out[i] != texts[i] for i in negatives) / len(negatives), 4),
                         "answers_changed": round(sum(o != a for o, a in zip(a_out, answers)) / len(answers), 4),
                         "answer_tokens_redacted_per_1000": round(1000 * sum(p is not None for ps in a_pred for p in ps) / answer_tokens, 2)}
    print(f"labelled set: {len(texts)} texts ({len(negatives)} without PII), {sum(g is not None for gs in gold for g in gs)} "
          f"gold tokens of {sum(len(gs) for gs in gold)}; {len(answers)} qa_feedback answers ({answer_tokens} tokens); "
          f"NER model load {load_s:.1f} s")
    kinds = sorted(results["default+ner"]["scores"])
    print(f"{'kind':<12}" + "".join(f"{n + ' P/R':>22}" for n in results))
    for k in kinds:
        cells = []
        for r in results.values():
            s = r["scores"].get(k, {})
            cells.append(f"{_f(s.get('precision'))} / {_f(s.get('recall'))}")
        print(f"{k:<12}" + "".join(f"{c:>22}" for c in cells))
    for key in ("texts_per_s", "answer_texts_per_s", "negatives_changed", "answers_changed", "answer_tokens_redacted_per_1000"):
        print(f"{key:<34}" + "".join(f"{str(r[key]):>16}" for r in results.values()))
    rows = []
    peer = "default pass (regex + checksums), same run"
    for k in kinds:
        for what in ("precision", "recall"):
            ours, base = results["default+ner"]["scores"][k][what], results["default"]["scores"].get(k, {}).get(what)
            rows.append({"metric": f"{what} {k}, default+NER (NER alone {_f(results['ner']['scores'].get(k, {}).get(what))})",
                         "ours": ours, "peer": base, "peer_name": peer, "ratio": None, "target": None, "unit": "token share"})
    for key, unit in (("texts_per_s", "texts/s, labelled set"), ("answer_texts_per_s", "texts/s, qa answers"),
                      ("answers_changed", "share of qa answers changed"), ("negatives_changed", "share of texts without PII changed")):
        ours, base = results["default+ner"][key], results["default"][key]
        rows.append({"metric": f"{key}, default+NER (NER alone {results['ner'][key]})", "ours": ours, "peer": base, "peer_name": peer,
                     "ratio": round(ours / base, 4) if base else None, "target": None, "unit": unit})
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=2) + "\n")
    (RESULTS.parent / "pii_detail.json").write_text(json.dumps({"ner_model_load_s": round(load_s, 2), "passes": results}, indent=2) + "\n")
    return 0


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


if __name__ == "__main__":
    raise SystemExit(main())
