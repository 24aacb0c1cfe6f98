"""Monitoring benchmark: drift check cost vs Evidently direct, time to alert / rollback, scoring latency.

    python -m bench.bench_monitoring [--rows 100000] [--skip-services]

Rows (metric, ours, peer, ratio, target) go to bench/results/monitoring.json. The services part starts
a real Kafka broker and MLflow server in a temporary home (like the test fixtures) and the scoring
service as a `lakeloop serve` subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results" / "monitoring.json"
Row = dict[str, object]


def row(metric: str, ours: float, peer: float | None, target: str) -> Row:
    ratio = (ours / peer) if peer else None
    r = {"metric": metric, "ours": round(ours, 4), "peer": None if peer is None else round(peer, 4),
         "ratio": None if ratio is None else round(ratio, 3), "target": target}
    print(f"{metric:55s} ours={r['ours']!s:>10}  peer={r['peer']!s:>10}  ratio={r['ratio']!s:>6}  target: {target}", flush=True)
    return r


def synthetic(n: int, *, seed: int, shift: float = 0.0) -> pd.DataFrame:
    """Featurizable traffic without per-row Python: word soup prompts/responses, scores, sparse feedback."""
    rng = np.random.default_rng(seed)
    vocab = np.array("the a of river tax volcano bread chess opera python answer precise wrong clear vague".split())
    lens = rng.integers(4, 14 + int(shift * 30), size=n)
    words = rng.choice(vocab, size=(n, int(lens.max())))
    prompt = [" ".join(w[:k]) for w, k in zip(words, lens, strict=True)]
    response = [" ".join(w[: max(2, k // 2)]) for w, k in zip(words[::-1], lens, strict=True)]
    fb = rng.random(n) < 0.3
    return pd.DataFrame({
        "prompt": prompt, "response": response, "score": rng.beta(2 + shift * 2, 2, n),
        "thumbs_down": np.where(fb, (rng.random(n) < 0.2 + shift * 0.2).astype(float), np.nan),
        "corrected": np.where(fb, (rng.random(n) < 0.05).astype(float), np.nan),
    })


def bench_drift_overhead(rows: int, tmp: Path) -> list[Row]:
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    from monitors.drift import DriftConfig, EmbeddingProjector, _plan, calibrate, check_drift, featurize

    print(f"drift: building {rows}-row reference and window ...", flush=True)
    ref_raw, cur_raw = synthetic(rows, seed=1), synthetic(rows, seed=2)
    rng = np.random.default_rng(0)
    ref_emb = rng.normal(size=(rows, 384)).astype(np.float32)  # caller-supplied embeddings (see docs)
    cur_emb = rng.normal(size=(rows, 384)).astype(np.float32)
    proj = EmbeddingProjector.fit(ref_emb[:5000])
    t = time.perf_counter()
    ref = featurize(ref_raw, embeddings=ref_emb, projector=proj)
    cur = featurize(cur_raw, embeddings=cur_emb, projector=proj)
    featurize_s = (time.perf_counter() - t) / 2
    config = DriftConfig()
    plan = calibrate(ref, cur, _plan(ref, cur, config)[0], config)  # the thresholds ours uses (size-aware)

    def direct() -> None:  # the peer: Evidently 0.7 called directly with the same metrics, thresholds and data
        numeric = [p.column for p in plan if p.group != "feedback"]
        flags = [p.column for p in plan if p.group == "feedback"]
        dd = DataDefinition(numerical_columns=numeric, categorical_columns=flags)
        cols = [p.column for p in plan]
        snap = Report([ValueDrift(column=p.column, method=p.method, threshold=p.threshold) for p in plan], include_tests=True).run(
            Dataset.from_pandas(cur[cols], data_definition=dd), Dataset.from_pandas(ref[cols], data_definition=dd))
        snap.save_html(str(tmp / "direct.html"))

    def ours() -> None:
        check_drift(ref, cur, config=config, report_html=tmp / "ours.html")

    direct()  # warm-up (imports, caches)
    t = time.perf_counter()
    calibrate(ref, cur, _plan(ref, cur, config)[0], config)
    calibrate_s = time.perf_counter() - t
    t_ours, t_peer = [], []
    for _ in range(5):
        t = time.perf_counter(); direct(); t_peer.append(time.perf_counter() - t)  # noqa: E702
        t = time.perf_counter(); ours(); t_ours.append(time.perf_counter() - t)  # noqa: E702
    o, p = float(np.median(t_ours)), float(np.median(t_peer))
    return [
        row(f"drift check, {rows} rows x {len(plan)} columns (s, median of 5)", o, p, "ratio <= 1.10"),
        row(f"size-aware thresholds alone ({config.null_resamples} resamples x {len(plan)} columns) (s)", calibrate_s, None, "info"),
        row(f"featurize {rows} rows: descriptors + embedding projections (s)", featurize_s, None, "info"),
    ]


def bench_drift_to_alert(tmp: Path, *, window_rows: int = 2000, window_minutes: int = 60, k: int = 3) -> list[Row]:
    from infra.settings import load_settings
    from monitors.alerts import AlertPolicy, LogFileChannel, Notifier
    from monitors.drift_job import prepare_reference, run_drift_window

    s = load_settings(home=tmp / "drift-home", drift_windows_to_alert=k)
    notifier = Notifier([], log=LogFileChannel(tmp / "alerts.jsonl"), state_path=tmp / "state.json", policy=AlertPolicy())
    reference = prepare_reference(synthetic(10_000, seed=3), embed_sample=0)
    onset, t0 = 4, datetime(2026, 1, 1, tzinfo=timezone.utc)
    compute_from_onset, alert_window, false_alarms = 0.0, None, 0
    for i in range(onset + k + 2):
        start = t0 + timedelta(minutes=window_minutes * i)
        window = synthetic(window_rows, seed=100 + i, shift=0.6 if i >= onset else 0.0)
        t = time.perf_counter()
        res = run_drift_window(s, reference, window, window_start=start, window_end=start + timedelta(minutes=window_minutes),
                               notifier=notifier, embed_sample=0, mlflow_logging=False)
        if i >= onset and alert_window is None:
            compute_from_onset += time.perf_counter() - t
        if res.streak.action == "alert":
            if i < onset:
                false_alarms += 1
            elif alert_window is None:
                alert_window = i - onset + 1
    assert alert_window is not None, "drift never alerted"
    return [
        row(f"drift onset -> alert (windows, K={k})", alert_window, k, "<= K"),
        row(f"drift onset -> alert (stream minutes, {window_minutes}-min windows)", alert_window * window_minutes, None, "info"),
        row("drift onset -> alert (compute seconds)", compute_from_onset, None, "info"),
        row("false drift alerts before onset", false_alarms, None, "0"),
    ]


def _start_platform(home: Path):
    from tests.conftest import Platform

    p = Platform(home)
    os.environ.update(p.settings.env())
    print("services: starting Kafka and MLflow (real, on loopback) ...", flush=True)
    p.ensure("kafka", "mlflow")
    return p


def bench_services(tmp: Path) -> list[Row]:
    import httpx

    from feedback.kafka_io import ensure_topic
    from monitors import model_store, rollout
    from monitors.alerts import notifier_from_settings
    from monitors.canary_job import run_canary_window
    from monitors.decision import RolloutPolicy
    from monitors.serve import predict_score
    from tests.monitoring_helpers import drive_window, make_pairs, register, train_scorer, wait_for

    out: list[Row] = []
    platform = _start_platform(tmp / "svc-home")
    s = platform.settings
    try:
        ensure_topic(s, s.predictions_topic)
        ensure_topic(s, s.feedback_topic)
        data = make_pairs(800, seed=7)
        good, flipped = train_scorer(data), train_scorer(data, flip=True)
        v1, v2 = register(s, good), register(s, flipped)
        rollout.start_canary(s, version=v1, actor="bench", reason="first")
        env = {**os.environ, **s.env(), "LAKELOOP_SERVE_POLL_SECONDS": "0.5", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        log = open(tmp / "serve.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "orchestration.cli", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
        url = s.serve_url
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"scoring service did not become ready; see {tmp / 'serve.log'}")
                time.sleep(0.5)
            # latency and throughput, against the direct in-process predict as the floor
            traffic = make_pairs(400, seed=11)
            lat = []
            with httpx.Client(timeout=10) as c:
                for i, r in traffic.iterrows():
                    t = time.perf_counter()
                    c.post(f"{url}/score", json={"prompt": r.prompt, "response": r.response, "conversation_id": f"b{i}"}).raise_for_status()
                    lat.append((time.perf_counter() - t) * 1000)
            model = model_store.load_pyfunc(s, v1)
            direct = []
            for _, r in traffic.iterrows():
                t = time.perf_counter()
                predict_score(model, r.prompt, r.response)
                direct.append((time.perf_counter() - t) * 1000)
            out.append(row("scoring latency p50 over HTTP (ms) vs direct predict", float(np.percentile(lat, 50)), float(np.percentile(direct, 50)), "info"))
            out.append(row("scoring latency p95 over HTTP (ms) vs direct predict", float(np.percentile(lat, 95)), float(np.percentile(direct, 95)), "info"))
            n_total, threads = 800, 4
            def worker(k: int) -> None:
                with httpx.Client(timeout=10) as c:
                    for i in range(n_total // threads):
                        r = traffic.iloc[i % len(traffic)]
                        c.post(f"{url}/score", json={"prompt": r.prompt, "response": r.response, "conversation_id": f"t{k}-{i}"}).raise_for_status()
            t = time.perf_counter()
            ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
            [x.start() for x in ts]  # noqa: B018
            [x.join() for x in ts]  # noqa: B018
            rps = n_total / (time.perf_counter() - t)
            direct_rps = 1000.0 / float(np.mean(direct))
            out.append(row(f"scoring throughput, {threads} clients (req/s) vs direct predict", rps, direct_rps, "info"))

            # canary regression -> rollback
            policy = RolloutPolicy(steps=(0.1, 0.5), min_feedback=20)
            t_start = time.perf_counter()
            rollout.start_canary(s, version=v2, policy=policy, actor="bench", reason="regressed canary")
            wait_for(url, lambda b: b["canary"] == v2)
            windows = 0
            for w in range(4):
                since = datetime.now(timezone.utc)
                drive_window(s, url, seed=500 + w)
                time.sleep(0.5)
                windows += 1
                res = run_canary_window(s, since=since, until=datetime.now(timezone.utc), notifier=notifier_from_settings(s),
                                        policy=policy, source="kafka", actor="bench")
                if type(res.decision).__name__ == "Rollback":
                    break
            wait_for(url, lambda b: b["canary"] is None)
            out.append(row("canary regression -> rollback (analysis windows)", windows, 2, "<= 2"))
            out.append(row("canary regression -> rollback, 300 req/window (wall s)", time.perf_counter() - t_start, None, "info"))
        finally:
            proc.terminate()
            proc.wait(timeout=20)
            log.close()
    finally:
        platform.stop()
    return out


def main(argv: list[str] | None = None) -> list[Row]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000, help="rows per drift window (and reference)")
    ap.add_argument("--skip-services", action="store_true", help="only the drift parts (no Kafka / MLflow)")
    args = ap.parse_args(argv)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="lakeloop-bench-") as d:
        tmp = Path(d)
        rows += bench_drift_overhead(args.rows, tmp)
        rows += bench_drift_to_alert(tmp)
        if not args.skip_services:
            rows += bench_services(tmp)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=2))
    print(f"wrote {RESULTS}")
    return rows


if __name__ == "__main__":
    main()
