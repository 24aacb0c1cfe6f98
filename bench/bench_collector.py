"""Collector benchmark: feedback events through `lakeloop collector run` (HTTP -> validation -> Kafka, acks=all)
beside the direct Kafka producer (``feedback.producer.FeedbackProducer``), measured in the same run on the same
broker.

Starts its own Kafka broker (temp home, free ports) and the collector as its own process, as `lakeloop up` runs
it, then measures, with ~1 KB qa_feedback events:
  throughput, batched: requests of 500 events from 4 connections, beside the producer sending as fast as it can;
  throughput, single events: one event per request from 64 connections;
  latency at 500 requests/s: one event per request, sent on a fixed schedule (open loop: latency counts from
  the scheduled send, so a stall is not hidden), p50/p95/p99 after 3 s of warm-up at the rate, beside the
  producer's send -> acknowledgement at the same rate (warmed up the same way).
The load generator is a minimal HTTP/1.1 keep-alive client on asyncio (cheaper per request than httpx, so the
figures are the collector's, not the client's). Rows go to bench/results/collector.json.

    python -m bench.bench_collector [--events 50000] [--singles 5000] [--rate 500] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from bench.bench_ingest import past_events, start_platform
from infra.ports import free_port

RESULTS = Path(__file__).resolve().parent / "results" / "collector.json"


# ---- a minimal HTTP/1.1 client: keep-alive connections, POST, status + body ----------------------------------
class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, host: str, port: int) -> Conn:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, host)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        if not status_line:  # the server closed the connection (idle past its keep-alive timeout)
            raise ConnectionResetError("connection closed by the server")
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def _throughput(host: str, port: int, bodies: list[bytes], per_body: int, concurrency: int) -> tuple[float, int]:
    """(events/s, failed requests) posting ``bodies`` from ``concurrency`` connections."""
    queue = list(reversed(bodies))
    failed = 0

    async def worker() -> None:
        nonlocal failed
        conn = await Conn.open(host, port)
        try:
            while queue:
                status, _ = await conn.post("/v1/feedback", queue.pop())
                failed += status != 202
        finally:
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(bodies) * per_body / (time.perf_counter() - t0), failed


async def _paced(host: str, port: int, bodies: list[bytes], rate: float) -> tuple[list[float], float, int]:
    """(latencies in ms from each scheduled send, achieved requests/s, failed) at ``rate`` requests/s, open loop."""
    idle: list[Conn] = [await Conn.open(host, port) for _ in range(16)]
    latencies: list[float] = []
    failed = 0

    async def one(body: bytes, due: float) -> None:
        nonlocal failed
        conn = idle.pop() if idle else await Conn.open(host, port)
        try:
            status, _ = await conn.post("/v1/feedback", body)
        except ConnectionError:  # idle too long: the request never reached the app; a fresh connection
            conn.close()
            conn = await Conn.open(host, port)
            status, _ = await conn.post("/v1/feedback", body)
        latencies.append((time.perf_counter() - due) * 1000.0)
        failed += status != 202
        idle.append(conn)

    tasks = []
    t0 = time.perf_counter()
    for k, body in enumerate(bodies):
        due = t0 + k / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(body, due)))
    await asyncio.gather(*tasks)
    achieved = len(bodies) / (time.perf_counter() - t0)
    for conn in idle:
        conn.close()
    return latencies, achieved, failed


# ---- the peer: the direct producer ----------------------------------------------------------------------------
def producer_rate(settings, topic: str, payloads: list[bytes]) -> float:  # type: ignore[no-untyped-def]
    from feedback.producer import FeedbackProducer

    with FeedbackProducer(settings, topic=topic) as producer:
        producer.send(payloads[0])
        producer.flush()
        t0 = time.perf_counter()
        for p in payloads[1:]:
            producer.send(p)
        producer.flush()
        return (len(payloads) - 1) / (time.perf_counter() - t0)


def producer_paced(settings, topic: str, payloads: list[bytes], rate: float) -> list[float]:  # type: ignore[no-untyped-def]
    """Send -> acknowledgement latency (ms, from each scheduled send) at ``rate`` records/s, one record per send."""
    from feedback.producer import FeedbackProducer

    latencies: list[float] = []
    lock = threading.Lock()
    with FeedbackProducer(settings, topic=topic, linger_ms=1) as producer:
        for p in payloads[: int(rate * 3)]:  # warm-up at the rate, as for the collector
            producer.send(p)
            time.sleep(1 / rate)
        producer.flush()
        t0 = time.perf_counter()
        for k, p in enumerate(payloads):
            due = t0 + k / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)

            def done(_meta: object, due: float = due) -> None:
                with lock:
                    latencies.append((time.perf_counter() - due) * 1000.0)

            producer.send(p).add_callback(done)
        producer.flush()
    return latencies


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else float("nan")


# ---- the collector as its own process -------------------------------------------------------------------------
def start_collector(settings, topic: str, log: Path) -> tuple[subprocess.Popen, str]:  # type: ignore[no-untyped-def]
    import httpx

    port = free_port()
    env = {**os.environ, **settings.env(), "LAKELOOP_FEEDBACK_TOPIC": topic, "LAKELOOP_COLLECTOR_PORT": str(port)}
    lakeloop = str(Path(sys.executable).parent / "lakeloop")
    with open(log, "ab") as out:
        proc = subprocess.Popen([lakeloop, "collector", "run"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the collector did not become ready:\n{log.read_text()[-2000:]}")
        time.sleep(0.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=50_000, help="events for the batched and producer throughput")
    ap.add_argument("--singles", type=int, default=5_000, help="single-event requests for the single throughput")
    ap.add_argument("--rate", type=float, default=500.0, help="requests/s of the latency run")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the latency run")
    args = ap.parse_args()

    n_paced = int(args.rate * args.seconds)
    total = args.events + args.singles + 2 * n_paced
    events = list(past_events(total // 3900 + 1, limit=total))
    payloads = [json.dumps(e, ensure_ascii=False, separators=(",", ":")).encode() for e in events]
    del events  # bytes are not tracked by the garbage collector; 65k event dicts would make the load generator pause
    gc.collect()
    gc.freeze()
    batched_p, singles_p = payloads[:args.events], payloads[args.events:args.events + args.singles]
    paced_p, peer_paced_p = payloads[-2 * n_paced:-n_paced], payloads[-n_paced:]
    size = statistics.mean(len(p) for p in payloads)
    print(f"{len(payloads):,} qa_feedback events, {size:,.0f} bytes on average")

    home = Path(tempfile.mkdtemp(prefix="lakeloop-bench-collector-"))
    settings = start_platform(home)
    load = [os.getloadavg()[0]]
    tag = uuid.uuid4().hex[:6]
    proc = None
    try:
        proc, url = start_collector(settings, f"bench-collector-{tag}", home / "collector.log")
        host, port = "127.0.0.1", int(url.rsplit(":", 1)[1])
        peer_rate = producer_rate(settings, f"bench-producer-{tag}", batched_p)
        print(f"direct producer: {peer_rate:,.0f} events/s")
        batch_bodies = [b"[" + b",".join(batched_p[i:i + 500]) + b"]" for i in range(0, len(batched_p), 500)]
        asyncio.run(_throughput(host, port, [b"[" + b",".join(singles_p[:500]) + b"]"], 500, 1))  # warm-up
        batched, batched_failed = asyncio.run(_throughput(host, port, batch_bodies, 500, 4))
        print(f"collector, batches of 500: {batched:,.0f} events/s ({batched_failed} failed requests)")
        singles, singles_failed = asyncio.run(_throughput(host, port, singles_p, 1, 64))
        print(f"collector, single events: {singles:,.0f} events/s ({singles_failed} failed requests)")
        load.append(os.getloadavg()[0])
        # warm-up at the rate (the broker's JIT, the collector's caches), then the measured run
        asyncio.run(_paced(host, port, singles_p[: int(args.rate * 3)], args.rate))
        lat, achieved, lat_failed = asyncio.run(_paced(host, port, paced_p, args.rate))
        print(f"collector at {args.rate:g} req/s (achieved {achieved:,.0f}): p50 {pct(lat, 50):.1f} ms, "
              f"p95 {pct(lat, 95):.1f} ms, p99 {pct(lat, 99):.1f} ms ({lat_failed} failed)")
        peer_lat = producer_paced(settings, f"bench-producer-{tag}", peer_paced_p, args.rate)
        print(f"direct producer at {args.rate:g} records/s: p50 {pct(peer_lat, 50):.1f} ms, p95 {pct(peer_lat, 95):.1f} ms")
        load.append(os.getloadavg()[0])
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        from infra import services
        services.down(settings, log=lambda m: print(f"[platform] {m}"))
        shutil.rmtree(home, ignore_errors=True)  # the broker's data: ~140 MB a run

    note = (f"2 cores shared with other work: 1-min load average {', '.join(f'{x:.1f}' for x in load)} "
            f"(start, mid, end); events of ~{size:.0f} bytes")
    rows = [
        dict(metric="events/s, batches of 500 through the collector (4 connections)", ours=batched, peer=peer_rate,
             peer_name="FeedbackProducer direct (acks=all, idempotent)", target=">= 5000", unit="events/s"),
        dict(metric="events/s, one event per request (64 connections)", ours=singles, peer=peer_rate,
             peer_name="FeedbackProducer direct (acks=all, idempotent)", target=None, unit="events/s"),
        dict(metric=f"p50 latency, single events at {args.rate:g} req/s", ours=pct(lat, 50), peer=pct(peer_lat, 50),
             peer_name="FeedbackProducer send -> ack, same rate", target=None, unit="ms"),
        dict(metric=f"p95 latency, single events at {args.rate:g} req/s", ours=pct(lat, 95), peer=pct(peer_lat, 95),
             peer_name="FeedbackProducer send -> ack, same rate", target="<= 50 ms", unit="ms"),
        dict(metric=f"p99 latency, single events at {args.rate:g} req/s", ours=pct(lat, 99), peer=pct(peer_lat, 99),
             peer_name="FeedbackProducer send -> ack, same rate", target=None, unit="ms"),
    ]
    for row in rows:
        row["ratio"] = row["ours"] / row["peer"] if row["peer"] else None
        row["note"] = note
    row_extra = {"achieved_rate": achieved, "failed_requests": batched_failed + singles_failed + lat_failed}
    rows[3].update(row_extra)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\n{'metric':<60} {'ours':>10} {'peer':>10}  target")
    for row in rows:
        print(f"{row['metric']:<60} {row['ours']:>10,.1f} {row['peer']:>10,.1f}  {row['target'] or '-'}")
    print(note)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
