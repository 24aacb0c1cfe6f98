"""`lakeloop up` after a host reboot, against real services of this test's own (fresh home and ports).

The reboot is simulated: every service process and its children are SIGKILLed (no `lakeloop down`), so every pid
file under <home>/run is stale; two of the dead pids are then "reused" by unrelated live processes whose command
lines hold the service's marker (an operator's `tail -f` of the service's log), one by a plain `sleep`.
`up` must restart all four services without reformatting anything: Kafka's KRaft storage keeps its cluster id,
topic and messages; MLflow keeps its runs and model versions; Dagster keeps its runs and runs new ones.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra import services
from infra.settings import Settings
from tests.conftest import Platform
from tests.dagster_gql import RUN, gql, launch_assets, wait_for_run
from trainers.tracking import client

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MESSAGES = 50


@pytest.fixture()
def own_platform(tmp_path: Path) -> Iterator[Platform]:
    p = Platform(tmp_path / "home")
    old = dict(os.environ)
    os.environ.update(p.settings.env())
    try:
        p.ensure(*services.SERVICE_NAMES)
        yield p
    finally:
        p.stop()
        os.environ.clear()
        os.environ.update(old)


def _fill(s: Settings, topic: str) -> dict[str, str]:
    """Something in every store: Kafka messages, an MLflow run and model version, a Dagster run."""
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=s.bootstrap_servers)
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=s.bootstrap_servers, acks="all")
    for i in range(MESSAGES):
        producer.send(topic, key=str(i % 5).encode(), value=f"m{i}".encode())
    producer.flush()
    producer.close()
    c = client(s)
    run_id = c.create_run(c.create_experiment("before-reboot")).info.run_id
    c.log_metric(run_id, "loss", 0.25)
    c.create_registered_model("reboot-model")
    version = c.create_model_version("reboot-model", source="s3://lakeloop-tests/no-model", run_id=run_id).version
    dagster_run = launch_assets(s.dagster_url, [["lake_catalog"]])
    assert wait_for_run(s.dagster_url, dagster_run, timeout=180) == "SUCCESS"
    return {"mlflow_run": run_id, "version": str(version), "dagster_run": dagster_run}


def _messages(s: Settings, topic: str) -> list[str]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=s.bootstrap_servers, auto_offset_reset="earliest", consumer_timeout_ms=15_000)
    got: list[str] = []
    for m in consumer:
        got.append(m.value.decode())
        if len(got) == MESSAGES:
            break
    consumer.close()
    return sorted(got)


def _reboot(s: Settings) -> None:
    """SIGKILL every service's process group (the services and their children) and wait until all are gone."""
    pids = {n: json.loads((s.run_dir / f"{n}.pid").read_text())["pid"] for n in services.SERVICE_NAMES}
    for pid in pids.values():
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    for name, pid in pids.items():
        while services._alive(pid, ""):
            assert time.monotonic() < deadline, f"{name} (pid {pid}) survived SIGKILL"
            time.sleep(0.2)
    for port in (s.kafka_port, s.mlflow_port, s.dagster_port):
        while services.port_in_use(s.bind_host, port):
            assert time.monotonic() < deadline, f"port {port} still taken after the kill"
            time.sleep(0.2)


def _reuse_pid(s: Settings, name: str, proc: subprocess.Popen) -> None:
    """Point a pid file at ``proc``, as if the service's old pid now belonged to it."""
    path = s.run_dir / f"{name}.pid"
    info = json.loads(path.read_text())
    path.write_text(json.dumps({**info, "pid": proc.pid}))


def test_up_after_a_reboot_restarts_everything_and_keeps_all_data(own_platform: Platform) -> None:
    s = own_platform.settings
    topic = f"reboot-{uuid.uuid4().hex[:8]}"
    before = _fill(s, topic)
    meta = s.kafka_data_dir / "data" / "meta.properties"
    meta_before = (meta.read_text(), meta.stat().st_mtime_ns)

    _reboot(s)
    lookalikes = [subprocess.Popen(["tail", "-f", str(s.logs_dir / f"{n}.log")], stdout=subprocess.DEVNULL, start_new_session=True)
                  for n in ("mlflow", "dagster-daemon")]
    other = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        _reuse_pid(s, "mlflow", lookalikes[0])
        _reuse_pid(s, "dagster-daemon", lookalikes[1])
        _reuse_pid(s, "kafka", other)
        stale = {r.name: r for r in services.status(s)}
        assert not any(r.running for r in stale.values()), {n: (r.pid, r.note) for n, r in stale.items()}

        started = time.monotonic()
        rows = services.up(s, log=print)
        print(f"up after the reboot: {time.monotonic() - started:.0f}s")
        assert all(r.healthy for r in rows), rows
        assert all(p.poll() is None for p in (*lookalikes, other)), "`lakeloop up` touched a process that reused a pid"
    finally:
        for p in (*lookalikes, other):
            p.kill()
            p.wait()

    assert (meta.read_text(), meta.stat().st_mtime_ns) == meta_before, "Kafka's storage was formatted again"
    assert _messages(s, topic) == sorted(f"m{i}" for i in range(MESSAGES))
    c = client(s)
    assert c.get_run(before["mlflow_run"]).data.metrics == {"loss": 0.25}
    assert [v.version for v in c.search_model_versions("name='reboot-model'")] == [before["version"]]
    assert gql(s.dagster_url, RUN, {"runId": before["dagster_run"]})["runOrError"]["status"] == "SUCCESS"
    again = launch_assets(s.dagster_url, [["lake_catalog"]])  # the queue runs: the daemon really is back
    assert wait_for_run(s.dagster_url, again, timeout=180) == "SUCCESS"
