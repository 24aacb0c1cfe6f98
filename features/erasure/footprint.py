"""Which rows of the lake belong to one user, in every table that can hold them, and which data files hold them.

Raw user ids are in ``bronze/feedback_events`` and in the dead letters that still parse (or at least show a
``"user_id": "..."`` member); ``silver/feedback`` and the gold tables hold the keyed pseudonym
(``features.pseudonymize``). The rest is found through ids learned on the way, in the order data flows:

| table | the user's rows |
|---|---|
| ``governance/erasure_requests`` | ``user_id`` = the raw id (the requests an app sent; deleted last, so a request stays pending until its erasure is done) |
| ``bronze/feedback_events`` | ``user_id`` = the raw id |
| ``bronze/dead_letters`` | raw bytes whose JSON names the user, or one of their responses or conversations |
| ``silver/feedback`` | ``user_id`` = the pseudonym |
| ``bronze/predictions`` | the responses and conversations of the user's feedback (a prediction has no user column) |
| ``gold/training_examples`` | ``user_id`` = the pseudonym, or a response the user rated (an example averages every vote on its response) |
| ``gold/preference_pairs`` | ``user_id`` = the pseudonym (one pair per event) |
| ``silver/minhash_index`` | the signatures of those examples and pairs, and of the prompts no other user asked |

``scan`` reads every data file on disk (the current version's and the files older versions hold), so ids are
learned from rows removed long ago too, and it knows which files to vacuum; ``current`` reads the current versions.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import polars as pl

from features import lake
from features.erasure import storage
from infra.settings import Settings
from infra.storage import storage_options
from infra.tables import table_uri

REQUESTS = "governance/erasure_requests"
FEEDBACK, DEAD, PREDICTIONS = "bronze/feedback_events", "bronze/dead_letters", "bronze/predictions"
SILVER, INDEX = "silver/feedback", "silver/minhash_index"
EXAMPLES, PAIRS = "gold/training_examples", "gold/preference_pairs"
#: the order ids are learned in (each table's ids find rows of the later ones); deletes run in reverse
FLOW = (REQUESTS, FEEDBACK, DEAD, SILVER, PREDICTIONS, EXAMPLES, PAIRS, INDEX)
BRONZE_KEY = ("kafka_topic", "kafka_partition", "kafka_offset")  # a bronze row's identity (never the user id)
POINTWISE = ("thumbs", "rating")

COLUMNS: dict[str, tuple[str, ...]] = {
    REQUESTS: ("user_id", *BRONZE_KEY),
    FEEDBACK: ("user_id", "event_type", "response_id", "conversation_id", *BRONZE_KEY),
    DEAD: ("raw", *BRONZE_KEY),
    PREDICTIONS: ("response_id", "conversation_id", *BRONZE_KEY),
    SILVER: ("user_id", "event_type", "response_id", "conversation_id", "prompt_hash"),
    EXAMPLES: ("example_id", "user_id", "response_id"),
    PAIRS: ("pair_id", "user_id"),
    INDEX: ("doc_id",),
}


@dataclass
class Footprint:
    """What identifies one user's rows; grows as tables are read in ``FLOW`` order."""

    user_id: str = field(repr=False)  # the raw id: used to match, never stored
    pseudonym: str
    responses: set[str] = field(default_factory=set)
    conversations: set[str] = field(default_factory=set)
    pointwise: set[str] = field(default_factory=set)  # response ids of the user's thumbs and ratings
    examples: set[str] = field(default_factory=set)
    pairs: set[str] = field(default_factory=set)
    prompts: set[str] = field(default_factory=set)  # prompt hashes of the user's prompts
    shared_prompts: set[str] = field(default_factory=set)  # ... that other users asked too (their index rows stay)
    files: dict[str, set[str]] = field(default_factory=dict)  # table -> data files on disk holding the user's rows
    unparsed_dead_letters: int = 0  # current dead letters that are no JSON object and show no user_id member
    _unparsed: int = field(default=0, repr=False)  # ... of the last frame matched

    def match(self, table: str, df: pl.DataFrame) -> pl.Series:
        """Which rows of ``df`` (the ``COLUMNS`` of ``table``) are the user's; learns their ids on the way."""
        if table == DEAD:
            return self._dead_letters(df)
        if table in (FEEDBACK, REQUESTS):
            hit = (df["user_id"] == self.user_id).fill_null(False)
        elif table == SILVER:
            hit = (df["user_id"] == self.pseudonym).fill_null(False)
        elif table == PREDICTIONS:
            hit = _in(df["response_id"], self.responses) | _in(df["conversation_id"], self.conversations)
        elif table == EXAMPLES:
            hit = (df["user_id"] == self.pseudonym).fill_null(False) | _in(df["response_id"], self.pointwise)
        elif table == PAIRS:
            hit = (df["user_id"] == self.pseudonym).fill_null(False)
        elif table == INDEX:
            hit = _in(df["doc_id"], self.examples | self.pairs | (self.prompts - self.shared_prompts))
        else:
            raise KeyError(f"{table} holds no user rows")
        self._learn(table, df.filter(hit))
        return hit

    def _learn(self, table: str, rows: pl.DataFrame) -> None:
        if rows.height == 0:
            return
        if table in (FEEDBACK, SILVER):
            self.responses |= _values(rows["response_id"])
            self.conversations |= _values(rows["conversation_id"])
            self.pointwise |= _values(rows.filter(pl.col("event_type").is_in(POINTWISE))["response_id"])
        if table == SILVER:
            self.prompts |= _values(rows["prompt_hash"])
        elif table == EXAMPLES:
            self.examples |= _values(rows["example_id"])
        elif table == PAIRS:
            self.pairs |= _values(rows["pair_id"])

    def _dead_letters(self, df: pl.DataFrame) -> pl.Series:
        parsed = [_parse(r) for r in df["raw"].to_list()]
        own = [p is not None and p.get("user_id") == self.user_id for p in parsed]
        for p, mine in zip(parsed, own):  # the user's own events first: their ids find the rest
            if mine and p is not None:
                response, conversation = _str(p.get("response_id")), _str(p.get("conversation_id"))
                if response is not None:
                    self.responses.add(response)
                    if p.get("event_type") in POINTWISE:
                        self.pointwise.add(response)
                if conversation is not None:
                    self.conversations.add(conversation)
        # a record that does not parse may still show its user: "user_id": "<id>" (as sent, or \u-escaped)
        spelled = {json.dumps(self.user_id, ensure_ascii=False).encode("utf-8"), json.dumps(self.user_id).encode("utf-8")}
        pattern = re.compile(rb'"user_id"\s*:\s*(?:' + b"|".join(re.escape(s) for s in sorted(spelled)) + rb")")
        hit, unparsed = [], 0
        for raw, p, mine in zip(df["raw"].to_list(), parsed, own):
            if p is None:
                found = bool(raw) and pattern.search(raw) is not None
                unparsed += not found
                hit.append(found)
            else:
                hit.append(mine or _str(p.get("response_id")) in self.responses or _str(p.get("conversation_id")) in self.conversations)
        self._unparsed = unparsed
        return pl.Series(hit, dtype=pl.Boolean)


def _str(v: object) -> str | None:
    return v if isinstance(v, str) else None


def _in(col: pl.Series, values: set[str]) -> pl.Series:
    if not values:
        return pl.Series([False] * len(col), dtype=pl.Boolean)
    return col.is_in(pl.Series(sorted(values), dtype=pl.String).implode()).fill_null(False)


def _values(col: pl.Series) -> set[str]:
    return {v for v in col.to_list() if isinstance(v, str)}


def _parse(raw: bytes | None) -> dict | None:
    """A dead letter's JSON object, or None (not UTF-8 JSON, not an object, or cut short)."""
    if not raw:
        return None
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _frame(uri: str, rel: str, columns: tuple[str, ...], opts: storage.Options) -> pl.DataFrame:
    df = pl.from_arrow(storage.read_columns(uri, rel, columns, storage_options=opts))
    assert isinstance(df, pl.DataFrame)
    return df


def scan(settings: Settings, user_id: str, pseudonym: str) -> Footprint:
    """The user's ids from every data file on disk of every table, and the files that hold their rows."""
    fp = Footprint(user_id, pseudonym)
    opts = storage_options(settings)
    for table in FLOW:
        uri = table_uri(settings, table)
        if table == INDEX:
            fp.shared_prompts = shared_prompts(settings, fp)
        held = set()
        for rel in storage.data_files(uri, storage_options=opts):
            if bool(fp.match(table, _frame(uri, rel, COLUMNS[table], opts)).any()):
                held.add(rel)
        fp.files[table] = held
    return fp


def shared_prompts(settings: Settings, fp: Footprint) -> set[str]:
    """The user's prompt hashes that other users' current silver rows hold too."""
    if not fp.prompts:
        return set()
    rows = lake.read(table_uri(settings, SILVER), columns=["user_id", "prompt_hash"], storage_options=storage_options(settings))
    if rows is None:
        return set()
    others = rows.filter((pl.col("user_id") != fp.pseudonym).fill_null(True))
    return fp.prompts & _values(others["prompt_hash"])


def current(settings: Settings, fp: Footprint) -> dict[str, pl.DataFrame]:
    """Per table, the user's rows in its current version (the ``COLUMNS``), in ``FLOW`` order; learns ids."""
    out: dict[str, pl.DataFrame] = {}
    for table in FLOW:
        if table == INDEX:
            fp.shared_prompts = shared_prompts(settings, fp)
        df = lake.read(table_uri(settings, table), columns=list(COLUMNS[table]), storage_options=storage_options(settings))
        if df is None:
            continue
        out[table] = df.filter(fp.match(table, df))
        if table == DEAD:
            fp.unparsed_dead_letters = fp._unparsed
    return out
