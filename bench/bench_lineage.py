"""Storage cost of lineage protection: `python -m bench.bench_lineage [--days 14 --every 1]`.

Curates the shared qa_feedback data over ``--days`` days with the local engine, each day's last quarter of
feedback arriving late (the next day re-curates the day before, replacing its partition), and registers a model
(pins both gold tables' latest versions) every ``--every`` days. Then, per gold table: the live data, what
lakeloop's vacuum keeps for the pins once every removed file is old enough (``keep_versions``; a dry run at 0 h,
so no waiting), the whole log (kept by ``features.lineage.KEEP_HISTORY``), and what a snapshot of the pinned
training set per registered version would cost instead (the pinned version's files, copied). Without
``--days`` it runs three horizons (14 days / a model a day, 14 / every 3, 28 / weekly) and writes
bench/results/lineage.json (docs/design/training.md quotes it).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LAKELOOP_SHARED_DATA", REPO.parent / "shared" / "data" / "qa_feedback")) / "dev_feedback.json"
GOLD = ("gold/training_examples", "gold/preference_pairs")
RESULTS = REPO / "bench" / "results" / "lineage.json"
SCENARIOS = ((14, 1), (14, 3), (28, 7))


def _bytes(paths: list[str]) -> int:
    return sum(os.path.getsize(p.removeprefix("file://")) for p in paths)


def measure(days: int, every: int, home: Path) -> dict[str, dict[str, int]]:
    sys.path.insert(0, str(REPO))
    from deltalake import DeltaTable

    from features import pipeline_local as local
    from features.config import CurationConfig
    from infra.settings import load_settings
    from infra.tables import table_uri
    from tests.curation_fixtures import START, qa_events, write_bronze

    s, cfg, key = load_settings(home=home), CurationConfig(), b"bench-lineage-key-0123456789"
    events = qa_events(DATA, days=days)
    dates = [START + timedelta(days=n) for n in range(days)]
    by_day = {d: [e for e in events if e["event_date"] == d] for d in dates}
    bronze, offset = table_uri(s, "bronze/feedback_events"), 0
    pins: dict[str, list[int]] = {g: [] for g in GOLD}

    def curate(day: object, batch: list[dict]) -> None:
        nonlocal offset
        write_bronze(bronze, batch, first_offset=offset)
        offset += len(batch)
        local.curate_silver(s, day, cfg=cfg, key=key)
        local.curate_examples(s, day, cfg=cfg)
        local.curate_pairs(s, day, cfg=cfg)

    for i, day in enumerate(dates):
        cut = len(by_day[day]) * 3 // 4
        curate(day, by_day[day][:cut])
        if i:
            prev = dates[i - 1]
            curate(prev, by_day[prev][len(by_day[prev]) * 3 // 4:])
        if i % every == every - 1:
            for g in GOLD:
                pins[g].append(DeltaTable(table_uri(s, g)).version())
    out = {}
    for g in GOLD:
        uri = table_uri(s, g)
        dt = DeltaTable(uri)
        would = set(dt.vacuum(retention_hours=0, dry_run=True, enforce_retention_duration=False))
        still = set(dt.vacuum(retention_hours=0, dry_run=True, enforce_retention_duration=False, keep_versions=sorted(pins[g])))
        out[g] = {"commits": dt.version() + 1, "pins": len(pins[g]), "live": _bytes(dt.file_uris()),
                  "kept": _bytes([f"{uri}/{f}" for f in would - still]), "log": _bytes(glob.glob(f"{uri}/_delta_log/*")),
                  "snapshot": sum(_bytes(DeltaTable(uri, version=v).file_uris()) for v in pins[g])}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, help="one horizon instead of the three default ones")
    ap.add_argument("--every", type=int, default=1, help="with --days: register a model every N days")
    args = ap.parse_args(argv)
    out = []
    for days, every in [(args.days, args.every)] if args.days else SCENARIOS:
        with tempfile.TemporaryDirectory() as home:
            rows = measure(days, every, Path(home))
        total = {k: sum(r[k] for r in rows.values()) for k in ("live", "kept", "log", "snapshot", "pins")}
        for g, r in rows.items():
            print(f"{days} days, a model every {every}: {g}: {r['commits']} commits, {r['pins']} pins; live {r['live'] / 1e3:.0f} kB; "
                  f"kept for pins {r['kept'] / 1e3:.0f} kB ({r['kept'] / r['live']:.0%}); log {r['log'] / 1e3:.0f} kB; "
                  f"a snapshot per pin instead {r['snapshot'] / 1e3:.0f} kB ({r['snapshot'] / r['live']:.1f}x)", flush=True)
        what = f"both gold tables, {days} days, a model every {every} day(s) ({total['pins'] // 2} pins), live {total['live'] / 1e3:.0f} kB"
        out.append({"metric": f"kept for pinned versions: {what}", "ours": round(total["kept"] / 1e3), "peer": round(total["snapshot"] / 1e3),
                    "peer_name": "a snapshot of the pinned set per registered version", "ratio": round(total["kept"] / total["snapshot"], 3),
                    "target": "below the snapshot", "unit": "kB"})
        out.append({"metric": f"log kept whole (KEEP_HISTORY): {what}", "ours": round(total["log"] / 1e3), "peer": None, "peer_name": None,
                    "ratio": None, "target": None, "unit": "kB"})
    if not args.days:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
