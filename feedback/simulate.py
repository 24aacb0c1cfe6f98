"""The traffic generator behind `lakeloop simulate` and the demo: an app that asks the scoring service to
score its responses, then sends its users' feedback on them to Kafka.

Stationary traffic replays the real qa_feedback data: each question's four model answers are scored (with the
prompt its feedback events carry: the question, or with ``passages`` the RAG prompt), and
the real human feedback on them (thumbs from the error annotations, the correction, the six pairwise
preferences) follows as v1 events whose ``response_id`` matches the scored response, so feedback joins to
the model version that served it. Drifted traffic models a new app release whose answers are cut to their
first sentence: lengths and embeddings shift, and its users' thumbs-down and correction rates rise (this
feedback is synthetic, drawn with the seed, since the data has none for such answers). A share of events
can be replaced by malformed payloads, to exercise the dead-letter path.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import requests

from feedback.qa_feedback import iter_events, prompt_of, read_questions
from infra.errors import ServiceError

Phase = Literal["stationary", "drifted"]
MALFORMED_KINDS = ("not_json", "missing_field", "bad_type", "out_of_range", "bad_timestamp", "unknown_type", "empty")


@dataclass(frozen=True)
class SimConfig:
    """One run of simulated traffic. ``first``/``count`` (or ``questions``) select questions of the qa_feedback file."""

    first: int = 0
    count: int = 100
    questions: tuple[int, ...] = ()  # explicit question indices; when given, first/count are ignored
    rate: float = 0.0  # app requests per second; 0 = as fast as the service answers
    duration_s: float | None = None  # stop after this long, whatever is left
    drift_after: float | None = None  # fraction of the run after which traffic drifts (None: never)
    malformed_share: float = 0.0
    seed: int = 0
    run_id: int = 1  # distinguishes the ids of separate runs over the same questions
    passages: bool = False  # prompts carry the question's grounding passages (feedback.qa_feedback.rag_prompt)
    # "two_sentences": an app release that cuts its answers to two sentences, with the real feedback on each answer
    # carried over to its cut (drift_after's release cuts to one sentence and draws synthetic feedback)
    answers: Literal["full", "two_sentences"] = "full"


@dataclass
class SimStats:
    requests: int = 0
    scored_by: Counter = field(default_factory=Counter)  # alias -> count
    versions: Counter = field(default_factory=Counter)  # model version -> count
    events: int = 0
    malformed: Counter = field(default_factory=Counter)
    drifted_requests: int = 0
    unscored: int = 0
    elapsed_s: float = 0.0

    def summary(self) -> str:
        by = ", ".join(f"{k} {v}" for k, v in sorted(self.scored_by.items())) or "none"
        return (f"{self.requests} requests ({self.drifted_requests} drifted; scored by {by}; {self.unscored} unscored), "
                f"{self.events} feedback events ({sum(self.malformed.values())} malformed) in {self.elapsed_s:.1f}s")


def leading_sentences(text: str, n: int) -> str:
    """The first ``n`` sentences of ``text`` (all of it when it has no sentence end)."""
    return " ".join(m.strip() for m in re.findall(r".+?[.!?](?:\s|$)", text.strip(), flags=re.S)[:n]) or text.strip()


def first_sentence(text: str) -> str:
    return leading_sentences(text, 1)


def two_sentences(text: str) -> str:
    return leading_sentences(text, 2)


TWO_SENTENCE_APP = "qa-web-v3"  # the app id of the release that cuts answers to two sentences


def two_sentence_feedback(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The two-sentence release's users: the real feedback on each answer, on its cut."""
    out = []
    for e in events:
        e = {**e, "response": two_sentences(e["response"]), "app_id": TWO_SENTENCE_APP,
             "metadata": {**(e.get("metadata") or {}), "release": "v3-two-sentences"}}
        if e["event_type"] == "preference":
            e["response_b"] = two_sentences(e["response_b"])
        out.append(e)
    return out


def malformed(event: dict[str, Any], kind: str) -> bytes:
    """A broken copy of ``event`` of the given kind (each lands in dead_letters with its reason)."""
    e = dict(event)
    if kind == "not_json":
        return b"{" + json.dumps(e)[:40].encode()
    if kind == "missing_field":
        e.pop("prompt", None)
    elif kind == "bad_type":
        e["value"] = "thumbs up"
        e["event_type"] = "thumbs"
    elif kind == "out_of_range":
        e["event_type"], e["value"] = "rating", 9
    elif kind == "bad_timestamp":
        e["occurred_at"] = "yesterday at noon"
    elif kind == "unknown_type":
        e["event_type"] = "emoji_reaction"
    elif kind == "empty":
        return b""
    return json.dumps(e).encode()


class Scorer:
    """A client of the scoring service (`lakeloop serve`)."""

    def __init__(self, url: str, *, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.timeout = timeout

    def score(self, *, prompt: str, response: str, conversation_id: str, request_id: str, response_id: str) -> dict | None:
        try:
            r = self.session.post(f"{self.url}/score", json={
                "prompt": prompt, "response": response, "conversation_id": conversation_id,
                "request_id": request_id, "response_id": response_id}, timeout=self.timeout)
        except requests.RequestException as exc:
            raise ServiceError(f"the scoring service at {self.url} is unreachable: {exc}",
                               hint="start it with `lakeloop serve`") from None
        if r.status_code == 503:
            return None  # no champion yet: the app goes on without a score
        r.raise_for_status()
        return r.json()


def _drifted_feedback(events: list[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    """The drifted release's users: thumbs-down on most cut answers, and more corrections."""
    out = []
    for e in events:
        e = dict(e)
        if e["event_type"] == "thumbs":
            e["value"] = -1 if rng.random() < 0.85 else 1
        elif e["event_type"] == "preference":
            e["response_b"] = first_sentence(e["response_b"])
        e["response"] = first_sentence(e["response"])
        e["app_id"] = "qa-mobile-v2"
        e["metadata"] = {**(e.get("metadata") or {}), "release": "v2-short-answers", "synthetic_feedback": "true"}
        out.append(e)
    return out


def _by_question(events: Iterator[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for e in events:
        out.setdefault(int(e["conversation_id"].rsplit("-", 1)[1]), []).append(e)
    return out


def simulate(
    data_path: str | Path,
    cfg: SimConfig,
    *,
    send: Callable[[bytes | dict[str, Any]], Any],
    scorer: Scorer | None = None,
    say: Callable[[str], None] = print,
    progress_every: int = 100,
) -> SimStats:
    """Run ``cfg``'s traffic: score each answer through ``scorer`` (if any) and ``send`` the feedback."""
    rng = random.Random(cfg.seed)
    questions = read_questions(data_path)
    stop = min(len(questions), cfg.first + cfg.count)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    events = _by_question(
        e for e in iter_events(data_path, copies=cfg.run_id + 1, first_copy=cfg.run_id, days=1,
                               start=now.replace(hour=0, minute=0, second=0), passages=cfg.passages)
        if e["event_id"].startswith(f"qaf1-{cfg.run_id}-")
    )
    order = [i for i in cfg.questions if 0 <= i < len(questions)] if cfg.questions else list(range(cfg.first, stop))
    rng.shuffle(order)
    stats = SimStats()
    t0 = time.monotonic()
    drift_at = None if cfg.drift_after is None else int(len(order) * cfg.drift_after)
    for n, i in enumerate(order):
        if cfg.duration_s is not None and time.monotonic() - t0 > cfg.duration_s:
            break
        drifted = drift_at is not None and n >= drift_at
        q = questions[i]
        conv = f"qa-conv-{cfg.run_id}-{i:03d}"
        prompt = prompt_of(q, passages=cfg.passages)  # what the app sent its model, as its feedback events carry it
        for k in range(1, 5):
            response = q[f"prediction {k}"]
            if drifted:
                response = first_sentence(response)
            elif cfg.answers == "two_sentences":
                response = two_sentences(response)
            rid = f"qa-resp-{cfg.run_id}-{i:03d}-p{k}"
            if scorer is not None:
                out = scorer.score(prompt=prompt, response=response, conversation_id=conv,
                                   request_id=f"req-{cfg.run_id}-{i:03d}-p{k}", response_id=rid)
                if out is None:
                    stats.unscored += 1
                else:
                    stats.scored_by[out["alias"]] += 1
                    stats.versions[out["model_version"]] += 1
            stats.requests += 1
            stats.drifted_requests += int(drifted)
            if cfg.rate > 0:
                delay = stats.requests / cfg.rate - (time.monotonic() - t0)
                if delay > 0:
                    time.sleep(delay)
        feedback = events.get(i, [])
        if drifted:
            feedback = _drifted_feedback(feedback, rng)
        elif cfg.answers == "two_sentences":
            feedback = two_sentence_feedback(feedback)
        for e in feedback:
            e = {**e, "occurred_at": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")}
            if cfg.malformed_share > 0 and rng.random() < cfg.malformed_share:
                kind = MALFORMED_KINDS[rng.randrange(len(MALFORMED_KINDS))]
                send(malformed(e, kind))
                stats.malformed[kind] += 1
            else:
                send(e)
            stats.events += 1
        if progress_every and (n + 1) % progress_every == 0:
            say(f"  simulate: {n + 1}/{len(order)} questions, {stats.requests} requests, {stats.events} events")
    stats.elapsed_s = time.monotonic() - t0
    return stats


__all__ = ["SimConfig", "SimStats", "Scorer", "first_sentence", "malformed", "simulate"]
