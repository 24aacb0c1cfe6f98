"""Issue 17: erasure requests from apps. An ``erasure_request`` event on the feedback topic is validated like every
event (model, JSON Schema, fast path in agreement), lands exactly once in ``governance/erasure_requests``, and the
autopilot's ``erasure_requests_sensor`` -> ``erasure_job`` erases the user through ``lakeloop forget``'s code path;
``erasure_purge_schedule``'s job deletes the files after the grace.

The end-to-end test uses the session's real Kafka broker and MLflow server and real Delta tables; the Dagster sensor and
jobs are evaluated in-process (``build_sensor_context``, ``execute_in_process``) against them, not by a daemon."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from pathlib import Path

import dagster as dg
import jsonschema
import pytest

from features import lake
from features.erasure import footprint as F
from features.erasure import records
from features.erasure.requests import pending, pending_count
from feedback.batch import RawBatch
from feedback.events import ErasureRequestEvent, load_json_schema, validate_event
from feedback.flush import prepare
from feedback.streams import get_stream
from feedback.validation import Valid
from infra.settings import Settings, load_settings
from infra.tables import table_uri
from tests.curation_fixtures import START, qa_events
from tests.test_feedback_corpus import dumps, valid_event

KEY = b"erasure-requests-key-0123456789ab"
USER = "user-00"


def request(i: int = 0, **overrides: object) -> dict:
    event = {"event_type": "erasure_request", "event_id": f"erase-{i}", "occurred_at": "2026-01-05T12:00:00Z",
             "app_id": "test-app", "user_id": USER}
    for k, v in overrides.items():
        if v is None:
            event.pop(k, None)
        else:
            event[k] = v
    return event


# ---- the event: model, schema file, fast path ---------------------------------------------------------------------
@pytest.mark.parametrize(("overrides", "ok"), [
    ({}, True),
    ({"schema_version": 1, "extra_field": "kept in raw"}, True),
    ({"user_id": None}, False),
    ({"user_id": ""}, False),
    ({"event_id": None}, False),
    ({"occurred_at": "2026-01-05T12:00:00"}, False),  # no offset
    ({"user_id": 7}, False),
    ({"app_id": None}, False),
])
def test_an_erasure_request_is_checked_like_every_event(overrides: dict, ok: bool) -> None:
    event = request(**overrides)
    verdict = validate_event(event)
    assert isinstance(verdict, Valid) is ok, verdict
    if ok:
        assert isinstance(verdict.model, ErasureRequestEvent) and verdict.model.user_id == USER
    assert jsonschema.Draft202012Validator(load_json_schema()).is_valid(event) is ok  # the schema file agrees


def test_the_flush_routes_requests_to_their_table_and_the_fast_path_leaves_them_to_the_model() -> None:
    from feedback.fast_events import fast_feedback_columns
    from feedback.validation import TimeBounds

    raws = [dumps(valid_event(0)), dumps(request(1)), dumps(valid_event(2)), dumps(request(3, user_id=None)), dumps(request(4))]
    taken, _ = fast_feedback_columns(raws, 1 << 20, window_us=TimeBounds().window_us(datetime.now().astimezone()))
    assert taken == [0, 2]  # the requests go to the model, which decides
    stream = get_stream(Settings(), "feedback", topic="t")
    batch = RawBatch("t")
    batch.extend(0, list(range(len(raws))), [0] * len(raws), raws)
    out = prepare(stream, batch)
    assert out.valid.column("event_id").to_pylist() == ["evt-0000000", "evt-0000002"]
    assert out.requests is not None and out.requests.to_pylist()[0]["user_id"] == USER
    assert [r["kafka_offset"] for r in out.requests.to_pylist()] == [1, 4] and out.requests_last_offsets == {0: 4}
    assert set(out.requests.column_names) == {"event_id", "occurred_at", "app_id", "user_id", "kafka_topic", "kafka_partition",
                                              "kafka_offset", "kafka_timestamp", "ingested_at"}  # no raw payload kept
    assert out.dead is not None and out.dead.column("kafka_offset").to_pylist() == [3]


def test_the_collector_accepts_a_request_keyed_by_its_event_id() -> None:
    from infra.api_keys import Caller
    from feedback.collector.verdicts import Publishable, check_events

    stream = get_stream(Settings(), "feedback", topic="t")
    [verdict] = check_events(stream, [dumps(request(9))], Caller())
    assert isinstance(verdict, Publishable) and verdict.key == b"erase-9"
    [scoped] = check_events(stream, [dumps(request(9))], Caller(frozenset({"another-app"})))
    assert not isinstance(scoped, Publishable)  # a key scoped to another app may not erase this app's users


_DEFAULTS = """
import json
from orchestration.automation import AUTOPILOT_SCHEDULES, AUTOPILOT_SENSORS
from orchestration.definitions import build_definitions
repo = build_definitions().get_repository_def()
print(json.dumps({**{n: repo.get_sensor_def(n).default_status.value for n in AUTOPILOT_SENSORS},
                  **{n: repo.get_schedule_def(n).default_status.value for n in AUTOPILOT_SCHEDULES}}))
"""


@pytest.mark.parametrize(("autopilot", "status"), [("on", "RUNNING"), ("off", "STOPPED")])
def test_every_autopilot_automation_is_defined_with_the_autopilot_default(autopilot: str, status: str, tmp_path: Path) -> None:
    """The settings' LAKELOOP_AUTOPILOT, read when a code location loads the definitions, is every automation's default.
    In a fresh process (this session's modules were imported under whatever environment earlier tests had)."""
    import os
    import subprocess
    import sys

    from orchestration.automation import AUTOPILOT_SCHEDULES, AUTOPILOT_SENSORS

    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKELOOP_")}
    env.update(LAKELOOP_AUTOPILOT=autopilot, LAKELOOP_HOME=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", _DEFAULTS], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
                         check=True).stdout
    defaults = json.loads(out.strip().splitlines()[-1])
    assert defaults == {n: status for n in (*AUTOPILOT_SENSORS, *AUTOPILOT_SCHEDULES)}
    assert "erasure_requests_sensor" in AUTOPILOT_SENSORS and "erasure_purge_schedule" in AUTOPILOT_SCHEDULES


# ---- end to end: Kafka -> ingestor -> sensor -> erasure_job -> purge ------------------------------------------------
def _as_sent(e: dict) -> dict:
    out = {k: v for k, v in e.items() if v is not None and k != "event_date"}
    out["occurred_at"] = e["occurred_at"].isoformat()
    return out


def _bytes_holding(root: str, needle: bytes) -> list[str]:
    return sorted(str(p) for p in Path(root).rglob("*") if p.is_file() and needle in p.read_bytes())


@pytest.mark.integration
def test_an_erasure_request_on_kafka_erases_the_user_and_the_purge_deletes_the_files(
        kafka: Settings, mlflow_server: Settings, qa_feedback_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from features.config import CurationConfig
    from features.engine import STAGES, curate
    from feedback.ingestor import Ingestor
    from feedback.producer import FeedbackProducer
    from orchestration.assets.curation.resources import CurationResource
    from orchestration.assets.governance.erasure_requests import erasure_job, erasure_requests_sensor
    from orchestration.assets.governance.purge import erasure_purge_job
    from orchestration.resources import LakeloopSettings

    tag = uuid.uuid4().hex[:8]
    s = load_settings(**{**mlflow_server.model_dump(), "home": tmp_path / "home", "lake_root": str(tmp_path / "lake"),
                         "feedback_topic": f"fb-erase-{tag}", "registered_model_name": f"erase-req-{tag}",
                         "erasure_grace_hours": 0.0})
    for k, v in s.env().items():  # the Dagster resources load the settings from the environment, as in a run
        monkeypatch.setenv(k, v)
    events = [_as_sent(e) for e in qa_events(qa_feedback_path, n_questions=6, days=1)]
    assert sum(e["user_id"] == USER for e in events) > 0
    with FeedbackProducer(s) as producer:
        for e in events:
            producer.send(json.dumps(e).encode(), key=e["conversation_id"])
        producer.send(json.dumps(request(1)).encode(), key="erase-1")  # the app's request, and a repeat of it
        producer.send(json.dumps(request(2, occurred_at="2026-01-05T12:00:05+01:00")).encode(), key="erase-2")
    stats = Ingestor(s, get_stream(s, "feedback"), group=f"g-{tag}", say=print).run(once=True)
    assert (stats.valid, stats.requests, stats.dead) == (len(events), 2, 0)
    again = Ingestor(s, get_stream(s, "feedback"), group=f"g2-{tag}", say=print).run(once=True)
    assert (again.records, again.requests) == (0, 0)  # exactly once: the requests' offsets are in their table's log
    assert pending(s)["event_id"].to_list() == ["erase-2", "erase-1"]  # oldest first (12:00:05+01:00 is 11:00:05Z)
    for stage in STAGES:
        curate(stage, s, START, cfg=CurationConfig(), key=KEY)
    assert lake.read(table_uri(s, F.SILVER)) is not None

    instance = dg.DagsterInstance.ephemeral()
    monkeypatch.setenv("LAKELOOP_PSEUDONYM_KEY", KEY.decode())  # the lake's key, as the deployment's runs read it
    resources = {"lakeloop": LakeloopSettings(), "curation": CurationResource()}
    result = erasure_requests_sensor(dg.build_sensor_context(instance=instance, resources={"lakeloop": LakeloopSettings()}))
    [run] = result.run_requests
    assert run.tags["lakeloop/pending_requests"] == "2" and USER not in json.dumps(run.tags) and not run.run_config
    done = erasure_job.execute_in_process(instance=instance, resources=resources, tags=run.tags)
    assert done.success
    assert USER not in "\n".join(str(e.message) for e in instance.all_logs(done.run_id))  # the run's log never names the user

    # every table: none of the user's rows; the requests are gone with them (one erasure for both)
    [rec] = records(s)
    assert rec.rows_removed[F.REQUESTS] == 2 and rec.rows_removed[F.FEEDBACK] > 0 and rec.rows_removed[F.SILVER] > 0
    for t in (F.REQUESTS, F.FEEDBACK):
        df = lake.read(table_uri(s, t))
        assert df is not None and df.filter(df["user_id"] == USER).height == 0, t
    assert pending_count(s)[0] == 0
    skipped = erasure_requests_sensor(dg.build_sensor_context(instance=instance, resources={"lakeloop": LakeloopSettings()}))
    assert not skipped.run_requests and "no pending" in skipped.skip_reason.skip_message
    assert _bytes_holding(s.lake, USER.encode())  # the files that held them are still on disk: the purge is deferred

    # the purge schedule's job: grace 0 has passed; not a byte of the raw id is left, requests included
    purged = erasure_purge_job.execute_in_process(instance=instance, resources={"lakeloop": LakeloopSettings()})
    assert purged.success and records(s)[0].vacuumed_at is not None
    assert _bytes_holding(s.lake, USER.encode()) == []
    assert lake.read(table_uri(s, F.FEEDBACK)).height == sum(e["user_id"] != USER for e in events)  # type: ignore[union-attr]


@pytest.mark.integration
@pytest.mark.slow
def test_the_daemon_fulfils_an_erasure_request_and_the_switch_covers_the_schedules(
        kafka: Settings, mlflow_server: Settings, dagster_platform: Settings, qa_feedback_path: Path) -> None:
    """The real platform: Kafka, MLflow, the Dagster webserver and daemon (autopilot off in the test platform). The
    switch lists and flips the sensors and the schedules through the webserver's GraphQL API; the daemon's
    erasure_requests_sensor, once on, starts erasure_job for a request produced to Kafka and ingested."""
    import time

    from features.config import CurationConfig
    from features.engine import STAGES, curate
    from features.pseudonymize import load_or_create_key
    from feedback.ingestor import Ingestor
    from feedback.producer import FeedbackProducer
    from orchestration.assets.curation.resources import dev_key_file
    from orchestration.automation import AUTOPILOT, sensor_states, set_autopilot

    tag = uuid.uuid4().hex[:8]
    s = dagster_platform.model_copy(update={"feedback_topic": f"fb-daemon-{tag}"})  # the daemon's lake, a topic of our own
    states = sensor_states(s)
    assert [st.name for st in states] == list(AUTOPILOT) and not any(st.running for st in states)
    assert {st.kind for st in states} == {"sensor", "schedule"}

    key = load_or_create_key(dev_key_file(s))  # the key the daemon's runs use (no LAKELOOP_PSEUDONYM_KEY here)
    events = [_as_sent(e) for e in qa_events(qa_feedback_path, n_questions=4, days=1)]
    with FeedbackProducer(s) as producer:
        for e in events:
            producer.send(json.dumps(e).encode(), key=e["conversation_id"])
        producer.send(json.dumps(request(7)).encode(), key="erase-7")
    assert Ingestor(s, get_stream(s, "feedback"), group=f"g-{tag}", say=print).run(once=True).requests == 1
    for stage in STAGES:
        curate(stage, s, START, cfg=CurationConfig(), key=key)
    assert pending_count(s)[0] == 1
    # the daemon's lake is the session's: earlier tests may have landed rows of the same qa user in it too
    bronze = lake.read(table_uri(s, F.FEEDBACK))
    user_rows = int((bronze["user_id"] == USER).sum())
    assert user_rows >= sum(e["user_id"] == USER for e in events) > 0

    names = ["erasure_requests_sensor", "erasure_purge_schedule"]
    try:
        on = {st.name: st.running for st in set_autopilot(s, True, names=names)}
        assert on == {n: n in names for n in AUTOPILOT}
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline and not records(s):
            time.sleep(3)
    finally:
        off = set_autopilot(s, False, names=names)
    assert not any(st.running for st in off)
    [rec] = records(s)
    assert rec.rows_removed[F.REQUESTS] == 1 and rec.rows_removed[F.FEEDBACK] == user_rows
    assert pending_count(s)[0] == 0
    silver = lake.read(table_uri(s, F.SILVER))
    assert silver is not None and silver.height > 0 and rec.pseudonym not in silver["user_id"].to_list()
