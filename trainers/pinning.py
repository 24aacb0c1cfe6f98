"""Which gold version training may pin: the latest one whose blocking checks passed, across runs.

Curation writes a gold Delta version per day and then checks it (asset checks in the same Dagster run).
A version is *checked* when every blocking check evaluated on it passed. Day-level checks (schema, PII)
judge the rows of the day just written; when the latest such check of a day failed, that day's bad rows
stay in every later version until the day is curated again and passes, so no version from that one on is
pinnable. Table-level checks (leakage, enough rows) judge one version only. Pure: the evaluations come
from the Dagster instance (``orchestration.assets.training.pins``).

An erasure (`lakeloop forget`, ``features.erasure``) deletes a user's rows in a commit of its own: every version
before it holds the erased rows and is never pinned again, and the version it makes, which only deletes rows,
passes the checks its previous version passed (the next curation run checks it for real).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

DAY_LEVEL = frozenset({"schema_contract", "no_pii"})


@dataclass(frozen=True)
class CheckEval:
    version: int  # the table version the check looked at
    partition: str | None  # the event day the run curated (None: a whole-table run)
    check: str
    passed: bool
    order: int = 0  # event-log order (storage id): later evaluations of a day replace earlier ones


@dataclass(frozen=True)
class Pin:
    version: int | None  # None: nothing may be pinned
    reason: str


def checked_version(evals: Iterable[CheckEval], *, latest: int | None, table: str = "gold table",
                    erasures: Iterable[int] = ()) -> Pin:
    """The latest version <= ``latest`` on which every blocking check passed, which holds no day whose latest
    day-level check failed, and which is not older than the latest erasure (``erasures``: the versions erasures made)."""
    evals = sorted(evals, key=lambda e: (e.order, e.version))
    if latest is None:
        return Pin(None, f"{table} does not exist yet")
    by_version: dict[int, bool] = {}
    failed_checks: dict[int, list[str]] = {}
    last_day_eval: dict[tuple[str | None, str], CheckEval] = {}
    for e in evals:
        by_version[e.version] = by_version.get(e.version, True) and e.passed
        if not e.passed:
            failed_checks.setdefault(e.version, []).append(f"{e.check}" + (f" [{e.partition}]" if e.partition else ""))
        if e.check in DAY_LEVEL:
            last_day_eval[(e.partition, e.check)] = e
    poisoned = [e for e in last_day_eval.values() if not e.passed]
    limit = min((e.version for e in poisoned), default=latest + 1)
    erased = sorted(v for v in set(erasures) if v <= latest)
    for v in erased:  # a deletion only: it inherits its previous version's verdict (in order: erasures in a row chain)
        if v not in by_version and v - 1 in by_version:
            by_version[v] = by_version[v - 1]
    floor = erased[-1] if erased else 0
    good = [v for v, ok in by_version.items() if ok and floor <= v < limit and v <= latest]
    if not good and erased and any(ok and v < floor for v, ok in by_version.items()):
        return Pin(None, f"{table}: no pinnable version: every checked version is older than the erasure at v{floor} (it holds "
                   "the erased rows); the next curation run makes a checked version after it")
    if good:
        v = max(good)
        note = "" if v == latest else f" (latest v{latest} is not pinnable: " + _why(by_version, failed_checks, poisoned, v, latest) + ")"
        return Pin(v, f"{table} v{v}: every blocking check passed{note}")
    if not by_version:
        return Pin(None, f"{table}: no version has been checked yet (curate through Dagster so the blocking checks run)")
    return Pin(None, f"{table}: no pinnable version: " + _why(by_version, failed_checks, poisoned, -1, latest))


def _why(by_version: dict[int, bool], failed: dict[int, list[str]], poisoned: list[CheckEval], after: int, latest: int) -> str:
    parts = [f"day {e.partition} failed {e.check} at v{e.version} (curate that day again)" for e in poisoned]
    bad = [v for v in sorted(failed) if v > after]
    if bad:
        parts.append("; ".join(f"v{v} failed {', '.join(sorted(set(failed[v])))}" for v in bad[-3:]))
    unchecked = [v for v in range(after + 1, latest + 1) if v not in by_version]
    if unchecked and not bad and not poisoned:
        parts.append(f"v{unchecked[0]}..v{unchecked[-1]} not checked yet")
    return "; ".join(parts) or "not checked"
