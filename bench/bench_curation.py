"""Curation benchmark: `python -m bench.bench_curation [--events N] [--spark-events N]`.

In one run, on events built from the shared qa_feedback data with variations (perturbed answers and
prompts, many users, several days):
- whole curation (silver + training examples + preference pairs), rows/s: local engine vs Spark local[*];
- the near-duplicate stage (texts -> verified pairs) of lakeloop, rensa and datasketch on the same labelled set
  (truth = exact Jaccard of word-shingle sets): cold (first) and warm (second) run docs/s, precision, recall, F1,
  all with the same shingles, num_perm, bands x rows, seed and threshold. The peers get the shingle strings from
  Python (a tokenizer equal to lakeloop's, checked) and verify LSH candidates with their own Jaccard estimate;
  each on its fastest documented path (rensa: batch ``RMinHash.from_token_sets`` + ``RMinHashLSH.insert_many`` /
  ``query_all``; datasketch: ``MinHash.bulk`` with an xxhash ``hashfunc`` + ``MinHashLSH.insertion_session``);
- the exact stages (event_id de-duplication + exact text-hash de-duplication), rows/s;
- a sweep of MinHash parameters (F1 and docs/s) that justifies the defaults.
Writes bench/results/curation.json (rows: metric, ours, peer, peer_name, ratio, target, unit).
``--neardup-only`` runs the near-duplicate comparison alone. ``--spark-cluster 2 --events N`` runs only whole curation
of N events on the local engine, Spark local[*] and a 2-worker Spark standalone cluster started on this machine, with
seconds per day and stage (bench/results/curation_spark_cluster.json).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DATA = Path(os.environ.get("LAKELOOP_SHARED_DATA", REPO.parent / "shared" / "data" / "qa_feedback")) / "dev_feedback.json"


def say(msg: str) -> None:
    print(msg, flush=True)


def build_events(n_target: int, *, days: int = 4, seed: int = 0) -> list[dict]:
    """>= n_target events: copies of the qa_feedback events with perturbed text, new ids, users and times."""
    sys.path.insert(0, str(REPO))
    from features.evaluation import perturb
    from tests.curation_fixtures import qa_events

    base = qa_events(DATA, days=days)
    rng = random.Random(seed)
    out: list[dict] = []
    copy = 0
    while len(out) < n_target:
        rate = 0.0 if copy == 0 else rng.choice([0.02, 0.1, 0.3, 0.6])
        for e in base:
            x = dict(e)
            if copy:
                x["event_id"] = f"{e['event_id']}-v{copy}"
                x["response_id"] = f"{e['response_id']}-v{copy}"
                x["user_id"] = f"user-{rng.randrange(5000):04d}"
                x["occurred_at"] = e["occurred_at"] + timedelta(seconds=copy * 37)
                for col in ("response", "corrected_response", "response_b"):
                    if x.get(col):
                        x[col] = perturb(x[col], rng, rate=rate)
                if rng.random() < 0.2:
                    x["prompt"] = perturb(x["prompt"], rng, rate=0.2)
                if rng.random() < 0.01:
                    x["comment"] = f"mail me at user{copy}@example.com or call +1 415 555 {rng.randrange(10000):04d}"
            out.append(x)
        copy += 1
    return out[:n_target]


def run_engine(engine: str, events: list[dict], home: Path, *, label: str | None = None, steps: list[dict] | None = None,
               **overrides: object) -> tuple[float, int]:
    """Whole curation of every day of ``events``; ``steps`` (if given) gets one row per day and stage with its seconds;
    ``overrides`` are settings (a Spark master, the executors' Python)."""
    from features.config import CurationConfig
    from features.engine import STAGES, curate
    from infra.settings import load_settings
    from infra.tables import table_uri
    from tests.curation_fixtures import write_bronze

    shutil.rmtree(home, ignore_errors=True)
    s = load_settings(home=home, jars_dir=os.environ.get("LAKELOOP_JARS_DIR", str(REPO / ".lakeloop" / "jars")), **overrides)
    label = label or engine
    write_bronze(table_uri(s, "bronze/feedback_events"), events)
    days = sorted({e["event_date"] for e in events})
    cfg = CurationConfig(engine=engine)  # type: ignore[arg-type]
    if engine == "spark":  # JVM start-up is not curation work: start the session before the clock
        from features.pipeline_spark import session

        session(s)
    t0 = time.perf_counter()
    out = 0
    for d in days:
        for stage in STAGES:
            jobs0 = _spark_jobs() if engine == "spark" else None
            rep = curate(stage, s, d, cfg=cfg, key=b"bench-key-0123456789abcdef")
            jobs = None if jobs0 is None else _spark_jobs() - jobs0
            out += rep.rows_out if stage != "silver" else 0
            say(f"  [{label}] {d} {rep.table}: {rep.rows_in} -> {rep.rows_out} in {rep.seconds:.1f}s"
                + ("" if jobs is None else f" ({jobs} Spark jobs, {rep.seconds / max(jobs, 1):.2f}s each)"))
            if steps is not None:
                steps.append({"engine": label, "day": str(d), "table": rep.table, "rows_in": rep.rows_in, "rows_out": rep.rows_out,
                              "seconds": rep.seconds, "spark_jobs": jobs})
    return time.perf_counter() - t0, out


def _spark_jobs() -> int:
    """Spark jobs the active session has started so far (job ids are sequential from 0)."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    ids = active.sparkContext.statusTracker().getJobIdsForGroup() if active is not None else []
    return max(ids, default=-1) + 1


_WORD = re.compile("[0-9a-z_\u0080-\U0010ffff]+")  # features.evaluation's tokenization, as one character class (faster)


def peer_shingles(texts: list[str], k: int) -> list[list[str]]:
    """Each text's k-word shingles for the peers, as strings (the sets of ``features.evaluation.shingles``)."""
    findall, join, out = _WORD.findall, " ".join, []
    for t in texts:
        w = findall(t.lower())
        out.append(list(map(join, zip(*[w[i:] for i in range(k)]))) if len(w) >= k else ([join(w)] if w else []))
    return out


def lakeloop_pairs(texts: list[str], params) -> set:
    from features import minhash

    sig = minhash.signatures(texts, params)
    i, j = minhash.near_duplicate_pairs(sig, minhash.band_keys(sig, params), params)
    return set(zip(i.tolist(), j.tolist()))


def rensa_pairs(texts: list[str], params) -> set:
    from rensa import RMinHash, RMinHashLSH

    mhs = RMinHash.from_token_sets(peer_shingles(texts, params.shingle), num_perm=params.num_perm, seed=params.seed)
    lsh = RMinHashLSH(threshold=params.threshold, num_perm=params.num_perm, num_bands=params.bands)
    lsh.insert_many(mhs)
    return {(i, j) for i, cands in enumerate(lsh.query_all(mhs)) for j in cands
            if j > i and mhs[i].jaccard(mhs[j]) >= params.threshold}


def datasketch_pairs(texts: list[str], params) -> set:
    import xxhash
    from datasketch import MinHash, MinHashLSH

    docs = [[sh.encode() for sh in doc] for doc in peer_shingles(texts, params.shingle)]  # datasketch hashes bytes
    mhs = MinHash.bulk(docs, num_perm=params.num_perm, seed=params.seed, hashfunc=xxhash.xxh32_intdigest)
    lsh = MinHashLSH(num_perm=params.num_perm, params=(params.bands, params.rows))
    with lsh.insertion_session() as session:
        for n, m in enumerate(mhs):
            session.insert(n, m, check_duplication=False)
    return {(o, n) for n, m in enumerate(mhs) for o in lsh.query(m) if o < n and mhs[o].jaccard(m) >= params.threshold}


NEARDUP_ENGINES = {"lakeloop": lakeloop_pairs, "rensa": rensa_pairs, "datasketch": datasketch_pairs}


def neardup_run(fn, texts: list[str], truth: set, params) -> dict:
    t0 = time.perf_counter()
    pairs = fn(texts, params)
    dt = time.perf_counter() - t0
    from features.evaluation import precision_recall

    return {"docs_per_s": len(texts) / dt, **precision_recall(pairs, truth)}


def neardup(texts: list[str], truth: set, params) -> dict:
    return neardup_run(lakeloop_pairs, texts, truth, params)


def neardup_table(texts: list[str], truth: set, params) -> dict[str, dict]:
    """Each engine twice on the same set: a cold (first in this process) and a warm run; module imports come first."""
    import datasketch  # noqa: F401
    import rensa  # noqa: F401
    import xxhash  # noqa: F401

    import features.minhash  # noqa: F401
    from features.evaluation import shingles

    assert all(set(s) == shingles(t, params.shingle) for t, s in zip(texts, peer_shingles(texts, params.shingle))), "peer shingles differ"
    out = {}
    for name, fn in NEARDUP_ENGINES.items():
        cold, warm = neardup_run(fn, texts, truth, params), neardup_run(fn, texts, truth, params)
        assert {k: v for k, v in cold.items() if k != "docs_per_s"} == {k: v for k, v in warm.items() if k != "docs_per_s"}, name
        out[name] = {**warm, "cold_docs_per_s": cold["docs_per_s"], "warm_docs_per_s": warm["docs_per_s"]}
    say(f"  | engine | cold docs/s | warm docs/s | precision | recall | F1 |\n  |---|---|---|---|---|---|")
    for name, r in out.items():
        say(f"  | {name} | {r['cold_docs_per_s']:,.0f} | {r['warm_docs_per_s']:,.0f} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} |")
    return out


def exact_stages(events: list[dict]) -> float:
    from features.labels import doc_text
    from features.silver import dedup_events, keep_first
    from features.split import text_hashes
    from tests.curation_fixtures import to_bronze

    bronze = pl.from_arrow(to_bronze(events + events[: len(events) // 20]))  # 5% redelivered event ids
    t0 = time.perf_counter()
    ev, _ = dedup_events(bronze)  # stage 1: event_id, earliest Kafka record survives
    ev = ev.with_columns(text_hashes(doc_text(ev, "example")))  # stage 2: exact text, earliest survives
    keep_first(ev, "text_hash", ["occurred_at", "event_id"])
    return bronze.height / (time.perf_counter() - t0)


def engines_on_cluster(events: list[dict], tmp: Path, *, workers: int) -> list[dict]:
    """Whole curation of the same events by the local engine, Spark local[*] and Spark on a ``workers``-worker
    standalone cluster on this machine (1 core, 1 GiB each; executors in a venv without lakeloop, which the session
    ships as a zip). Rows: rows/s per engine, then seconds per day and stage."""
    from infra.spark_cluster import executor_venv, start_local_cluster

    steps: list[dict] = []
    rates: dict[str, float] = {}
    say(f"whole curation, {len(events):,} events: local engine, Spark local[*], Spark on {workers} workers ...")
    for label, engine, home in (("local", "local", "local"), ("spark local[*]", "spark", "spark-local")):
        secs, _ = run_engine(engine, events, tmp / home, label=label, steps=steps, spark_driver_memory="1g")
        rates[label] = len(events) / secs
    python = executor_venv(tmp / "executor-venv")
    with start_local_cluster(tmp / "cluster", workers=workers, cores=1, memory="1g") as cluster:
        label = f"spark cluster ({workers} workers)"
        try:
            secs, _ = run_engine("spark", events, tmp / "cluster-home", label=label, steps=steps, spark_master=cluster.master_url,
                                 spark_executor_python=python, spark_driver_memory="1g", spark_executor_memory="768m")
        finally:
            from pyspark.sql import SparkSession

            active = SparkSession.getActiveSession()
            if active is not None:
                active.stop()
        rates[label] = len(events) / secs
    rows = [{"metric": f"whole curation rows/s, {len(events):,} events ({label})", "ours": rate, "peer": rates["local"],
             "peer_name": "local engine", "ratio": rate / rates["local"], "target": None, "unit": "rows/s"} for label, rate in rates.items()]
    say("  | engine | day | table | rows in | rows out | seconds | Spark jobs |\n  |---|---|---|---|---|---|---|")
    for st in steps:
        say(f"  | {st['engine']} | {st['day']} | {st['table']} | {st['rows_in']:,} | {st['rows_out']:,} | {st['seconds']:.1f} | "
            f"{'-' if st['spark_jobs'] is None else st['spark_jobs']} |")
        rows.append({"metric": f"{st['engine']}: {st['day']} {st['table']} seconds", "ours": st["seconds"], "peer": None,
                     "peer_name": None, "ratio": None, "target": None, "unit": "s"})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000, help="events for the whole-curation runs (>= 200k for the issue)")
    ap.add_argument("--spark-events", type=int, default=None, help="events for the Spark run (default: the same as --events)")
    ap.add_argument("--labelled-docs", type=int, default=20_000, help="size of the labelled near-dup set")
    ap.add_argument("--skip-spark", action="store_true")
    ap.add_argument("--neardup-only", action="store_true", help="only the near-duplicate comparison (no events, no whole-curation runs)")
    ap.add_argument("--spark-cluster", type=int, default=0, metavar="WORKERS",
                    help="only whole curation on local, Spark local[*] and a Spark standalone cluster of this many workers "
                         "started here (writes bench/results/curation_spark_cluster.json)")
    ap.add_argument("--days", type=int, default=4, help="event days (with --spark-cluster; the full run uses 4)")
    args = ap.parse_args(argv)
    if args.spark_cluster:
        sys.path.insert(0, str(REPO))
        tmp = Path(tempfile.mkdtemp(prefix="lakeloop-bench-cluster-"))
        try:
            rows = engines_on_cluster(build_events(args.events, days=args.days), tmp, workers=args.spark_cluster)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "curation_spark_cluster.json").write_text(json.dumps(rows, indent=2, default=float))
        for r in rows[:3]:
            say(f"{r['metric']}: {r['ours']:,.1f} rows/s ({r['ratio']:.3f}x the local engine)")
        return rows
    sys.path.insert(0, str(REPO))
    from features.config import MinHashParams
    from features.evaluation import labelled_corpus, true_pairs

    rows: list[dict] = []
    tmp = Path(tempfile.mkdtemp(prefix="lakeloop-bench-curation-"))
    try:
        if not args.neardup_only:
            say(f"building {args.events:,} events from {DATA} ...")
            events = build_events(args.events)
            say("exact stages ...")
            ex = exact_stages(events)
            rows.append({"metric": "exact stages (event_id + text hash dedup)", "ours": ex, "peer": None, "peer_name": None,
                         "ratio": None, "target": ">= 100000", "unit": "rows/s"})
            say(f"  exact stages: {ex:,.0f} rows/s")

        say("near-duplicate labelled set ...")
        questions = json.loads(DATA.read_text())
        p = MinHashParams()
        texts = labelled_corpus(questions, variants=max(args.labelled_docs - 2000, 0), rate=0.4, seed=3)
        truth = true_pairs(texts, k=p.shingle, threshold=p.threshold)
        say(f"  {len(texts):,} docs, {len(truth):,} true pairs at Jaccard >= {p.threshold} on {p.shingle}-word shingles; "
            f"num_perm={p.num_perm}, {p.bands} bands x {p.rows} rows, seed {p.seed}")
        nd = neardup_table(texts, truth, p)
        ours = nd["lakeloop"]
        for peer_name in ("rensa", "datasketch"):
            peer = nd[peer_name]
            for run in ("cold", "warm"):
                rows.append({"metric": f"near-dup docs/s, {run} run ({len(texts)} docs, {len(truth)} true pairs)", "ours": ours[f"{run}_docs_per_s"],
                             "peer": peer[f"{run}_docs_per_s"], "peer_name": peer_name, "ratio": ours[f"{run}_docs_per_s"] / peer[f"{run}_docs_per_s"],
                             "target": ">= 1.5x" if peer_name == "rensa" else None, "unit": "docs/s"})
            rows.append({"metric": "near-dup F1", "ours": ours["f1"], "peer": peer["f1"], "peer_name": peer_name, "ratio": ours["f1"] - peer["f1"],
                         "target": "ours >= peer - 0.01 (ratio = difference)" if peer_name == "rensa" else None, "unit": "F1"})
            for m in ("precision", "recall"):
                rows.append({"metric": f"near-dup {m}", "ours": ours[m], "peer": peer[m], "peer_name": peer_name, "ratio": None, "target": None, "unit": ""})

        if not args.neardup_only:
            say("parameter sweep (F1 at Jaccard >= 0.7, docs/s) ...")
            for num_perm, bands, shingle in [(64, 16, 5), (128, 16, 5), (128, 32, 5), (128, 32, 3), (256, 64, 5), (256, 32, 5)]:
                q = MinHashParams(num_perm=num_perm, bands=bands, shingle=shingle)
                tr = truth if shingle == p.shingle else true_pairs(texts, k=shingle, threshold=q.threshold)
                r = neardup(texts, tr, q)
                say(f"  num_perm={num_perm} bands={bands} shingle={shingle}: F1={r['f1']:.4f} P={r['precision']:.4f} R={r['recall']:.4f} {r['docs_per_s']:,.0f} docs/s")
                rows.append({"metric": f"sweep num_perm={num_perm} bands={bands} shingle={shingle}: F1", "ours": r["f1"], "peer": r["docs_per_s"],
                             "peer_name": "(docs/s of this setting)", "ratio": None, "target": None, "unit": "F1"})

            say(f"whole curation, local engine, {len(events):,} events ...")
            local_s, _ = run_engine("local", events, tmp / "local")
            local_rate = len(events) / local_s
            say(f"  local: {local_rate:,.0f} rows/s ({local_s:.1f}s)")
            if not args.skip_spark:
                sev = events[: args.spark_events] if args.spark_events else events
                say(f"whole curation, Spark engine (local[*]), {len(sev):,} events ...")
                spark_s, _ = run_engine("spark", sev, tmp / "spark")
                spark_rate = len(sev) / spark_s
                say(f"  spark: {spark_rate:,.0f} rows/s ({spark_s:.1f}s)")
                rows.append({"metric": f"whole curation ({len(events):,} events local, {len(sev):,} spark)", "ours": local_rate, "peer": spark_rate,
                             "peer_name": "Spark local[*] engine", "ratio": local_rate / spark_rate, "target": ">= 5x", "unit": "rows/s"})
            else:
                rows.append({"metric": f"whole curation ({len(events):,} events)", "ours": local_rate, "peer": None, "peer_name": None,
                             "ratio": None, "target": ">= 5x Spark", "unit": "rows/s"})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "curation.json").write_text(json.dumps(rows, indent=2, default=float))
    for r in rows:
        ratio = "" if r["ratio"] is None else f"  ratio {r['ratio']:.3f}"
        peer = "" if r["peer"] is None else f"  vs {r['peer_name']} {r['peer']:,.3f}"
        say(f"{r['metric']}: {r['ours']:,.3f} {r['unit']}{peer}{ratio}  (target {r['target']})")
    return rows


if __name__ == "__main__":
    main()
