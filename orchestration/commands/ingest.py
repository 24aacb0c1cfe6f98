"""`lakeloop produce | ingest | lake optimize | lake redact-expired`: feedback into Kafka, Kafka into bronze Delta tables.

Every flag falls back to an environment variable (LAKELOOP_<NAME>, see `infra.settings`), then a default.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

from infra.errors import DataError
from orchestration.commands.common import say, settings

lake_app = typer.Typer(help="Maintenance of the Delta lake.", no_args_is_help=True)
Stream = Literal["feedback", "predictions"]
FlushMode = Literal["process", "thread"]
QaShape = Literal["mixed", "thumbs", "preferences"]  # feedback.qa_feedback.SHAPES


def produce(
    file: Annotated[Path | None, typer.Option("--file", "-f", help="JSON Lines file ('-' for stdin); each line is sent as-is.")] = None,
    qa_feedback: Annotated[Path | None, typer.Option("--qa-feedback", help="Send the shared qa_feedback data as v1 events instead.")] = None,
    copies: Annotated[int, typer.Option(min=1, help="With --qa-feedback: how many copies (distinct ids) to send.")] = 1,
    passages: Annotated[bool, typer.Option("--passages/--no-passages", help="With --qa-feedback: prompts carry each question's "
                                           "grounding passages, as a RAG app logs them (the demo's way); default: the question alone.")] = False,
    shape: Annotated[QaShape, typer.Option(help="With --qa-feedback: which app's stream. mixed: thumbs on prediction 1 from its error "
                                           "spans, corrections and comparisons; thumbs: thumbs alone, every answer thumbed up or down by "
                                           "its human comparisons; preferences: the comparisons alone.")] = "mixed",
    topic: Annotated[str | None, typer.Option("--topic", "-t", help="Topic (default: the stream's topic from settings).")] = None,
    stream: Annotated[Stream, typer.Option(help="Which schema --validate checks and which default topic is used.")] = "feedback",
    validate: Annotated[bool, typer.Option("--validate", help="Check every line first; send nothing if any is invalid.")] = False,
) -> None:
    """Send feedback events (or prediction records) to Kafka, keyed by conversation_id; creates the topic if missing."""
    from feedback.producer import FeedbackProducer

    s = settings()
    if (file is None) == (qa_feedback is None):
        raise DataError("give exactly one of --file or --qa-feedback", hint="lakeloop produce --file events.jsonl")
    if qa_feedback is not None:
        from feedback.qa_feedback import iter_events, past_start

        events = iter_events(qa_feedback, copies=copies, passages=passages, start=past_start(copies), shape=shape)  # all in the past
        lines: list[bytes] = [json.dumps(e, ensure_ascii=False).encode() for e in events]
        source = f"{qa_feedback} x{copies}" + (f" ({shape} stream)" if shape != "mixed" else "")
    else:
        raw = sys.stdin.buffer.read() if str(file) == "-" else _read(file)
        lines = [ln for ln in raw.split(b"\n") if ln.strip()]
        source = str(file)
    if validate:
        _validate_or_fail(lines, stream, s.max_event_bytes)
    target = topic or (s.feedback_topic if stream == "feedback" else s.predictions_topic)
    with FeedbackProducer(s, topic=target) as producer:
        for i, line in enumerate(lines, 1):
            producer.send(line.rstrip(b"\r"))
            if i % 50_000 == 0:
                say(f"  queued {i:,} of {len(lines):,}")
    say(f"sent {producer.report.delivered:,} records from {source} to {target}")


def _read(path: Path) -> bytes:
    if not path.exists():
        raise DataError(f"{path} does not exist", hint="pass a JSON Lines file with one event per line")
    return path.read_bytes()


def _validate_or_fail(lines: list[bytes], stream: Stream, max_bytes: int) -> None:
    from feedback.events import validate_event
    from feedback.predictions import validate_prediction
    from feedback.validation import Invalid

    check = validate_event if stream == "feedback" else validate_prediction
    bad = [(i, r) for i, line in enumerate(lines, 1) if isinstance(r := check(line, max_bytes=max_bytes), Invalid)]
    if bad:
        shown = "\n".join(f"  line {i}: [{r.stage}] {r.reason}" for i, r in bad[:20])
        raise DataError(f"{len(bad)} of {len(lines)} lines are not valid {stream} records; nothing was sent:\n{shown}",
                        hint="fix the lines, or send without --validate to route them to bronze/dead_letters")
    say(f"all {len(lines):,} lines are valid {stream} records")


def ingest(
    stream: Annotated[Stream, typer.Option(help="feedback -> bronze/feedback_events; predictions -> bronze/predictions.")] = "feedback",
    topic: Annotated[str | None, typer.Option("--topic", "-t", help="Topic (default: the stream's topic from settings).")] = None,
    group: Annotated[str | None, typer.Option(help="Consumer group (env LAKELOOP_INGEST_GROUP).")] = None,
    instance_id: Annotated[str | None, typer.Option(help="Static group member id: a restarted ingestor takes its partitions back at once.")] = None,
    once: Annotated[bool, typer.Option("--once", help="Catch up with the end offsets seen at start, flush, exit 0.")] = False,
    flush_seconds: Annotated[float | None, typer.Option(help="Flush latency (env LAKELOOP_INGEST_FLUSH_SECONDS, default 1).")] = None,
    flush_records: Annotated[int | None, typer.Option(help="Flush at this many records (env LAKELOOP_INGEST_FLUSH_RECORDS).")] = None,
    flush_bytes: Annotated[int | None, typer.Option(help="Flush at this many bytes (env LAKELOOP_INGEST_FLUSH_BYTES).")] = None,
    flush_mode: Annotated[FlushMode | None, typer.Option(help="process: flushes in a worker process (second core); thread: in the "
                                                         "ingestor (env LAKELOOP_INGEST_FLUSH_MODE, default process).")] = None,
    flush_workers: Annotated[int | None, typer.Option(min=1, help="process mode: worker processes that prepare batches in "
                                                      "parallel and commit in order (env LAKELOOP_INGEST_FLUSH_WORKERS, default 2).")] = None,
    progress_seconds: Annotated[float, typer.Option(help="Seconds between progress lines.")] = 5.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON at exit.")] = False,
) -> None:
    """Ingest a Kafka topic into its bronze Delta table exactly once (offsets in the Delta log). SIGTERM flushes and exits."""
    from feedback.batch import FlushPolicy
    from feedback.ingestor import Ingestor
    from feedback.streams import get_stream

    s = settings(ingest_flush_workers=flush_workers)
    # kafka-python logs every failed reconnect with a traceback while a broker is down; the ingestor says it once
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    policy = FlushPolicy(
        latency_s=flush_seconds or s.ingest_flush_seconds,
        max_records=flush_records or s.ingest_flush_records,
        max_bytes=flush_bytes or s.ingest_flush_bytes,
    )
    ingestor = Ingestor(s, get_stream(s, stream, topic=topic), group=group or s.ingest_group, instance_id=instance_id,
                        policy=policy, progress_every_s=progress_seconds, flush_mode=flush_mode, say=_plain)
    stats = ingestor.run(once=once, handle_signals=True)
    if as_json:
        typer.echo(json.dumps(stats.as_dict()))


def _plain(msg: str) -> None:
    """Progress lines verbatim (no console markup: '[feedback]' is text), flushed at once for log files."""
    typer.echo(msg)
    sys.stdout.flush()


@lake_app.command("optimize")
def lake_optimize(
    table: Annotated[list[str] | None, typer.Option("--table", help="Table name(s); default: the bronze tables. Gold tables "
                                                    "keep every version a registered, non-archived model pins (read from MLflow).")] = None,
    retention_hours: Annotated[int, typer.Option(help="Vacuum files removed at least this long ago (>= 168).")] = 168,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what vacuum would delete; no compaction.")] = False,
) -> None:
    """Compact small files, checkpoint, and vacuum with a safe retention (bronze tables by default); for gold tables,
    say which pinned versions it kept readable. Then vacuum the erasures whose grace has passed (`lakeloop forget`)."""
    from features.erasure import vacuum_due
    from feedback.maintenance import BRONZE_TABLES, optimize_tables

    optimize_tables(settings(), table or BRONZE_TABLES, retention_hours=retention_hours, dry_run=dry_run, say=say)
    if not dry_run:
        vacuum_due(settings(), say=say)


@lake_app.command("redact-expired")
def lake_redact_expired() -> None:
    """Replace the raw text of bronze rows past their retention with the PII-redacted text: feedback events and
    predictions after raw_retention_days (30), dead letters after dead_letter_retention_days (7), counted from
    ingestion. The autopilot's raw_retention_schedule runs this daily; running it again is a no-op."""
    from feedback.retention import redact_expired

    done = redact_expired(settings(), say=say)
    if not done:
        say("no bronze table yet")


@lake_app.command("reseed")
def lake_reseed(
    stream: Annotated[Stream, typer.Option(help="Whose offsets: feedback (bronze/feedback_events) or predictions.")] = "feedback",
    topic: Annotated[str | None, typer.Option("--topic", "-t", help="Topic (default: the stream's topic from settings).")] = None,
    start: Annotated[Literal["earliest", "latest"], typer.Option("--from", help="earliest: ingest everything the topic holds "
                                                               "now; latest: only what is produced from now on.")] = "earliest",
) -> None:
    """Re-bind a stream's stored offsets to its topic as it is now (after the topic was deleted and recreated,
    or the ingestor was pointed at another cluster). Stop the stream's ingestors first."""
    from feedback.offsets import reseed
    from feedback.streams import get_stream

    s = settings()
    st = get_stream(s, stream, topic=topic)
    nxt = reseed(s, st, start=start)
    shown = ", ".join(f"p{p}@{o}" for p, o in sorted(nxt.items())) or "(no partitions)"
    say(f"re-seeded {st.table}, bronze/dead_letters{' and ' + st.requests_table if st.requests_table else ''} for {st.topic}: the ingestor reads from {shown}")


def register(app: typer.Typer) -> None:
    app.command()(produce)
    app.command()(ingest)
    app.add_typer(lake_app, name="lake")
