"""Exactly once on a replicated Kafka cluster: three KRaft nodes (each a broker and a controller) on loopback,
topics with replication factor 3 and min.insync.replicas 2 (the settings), lakeloop's idempotent acks=all
producer streaming qa_feedback events while two ingestors of one group land them in bronze; mid-stream the
leader of some partitions is SIGKILLed, producing and ingesting go on, and later it is restarted. Every event
the producer had acknowledged must be in bronze once (docs/design/ingestion.md, "On a cluster")."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from deltalake import DeltaTable

from feedback.batch import FlushPolicy
from feedback.ingestor import Ingestor
from feedback.producer import FeedbackProducer
from feedback.qa_feedback import load_events
from feedback.streams import get_stream
from infra import services
from infra.errors import ConfigError, ServiceError
from infra.jars import require_jars
from infra.kafka_cluster import ClusterNode, bootstrap_servers, format_storage, new_cluster_id, node_properties
from infra.ports import free_port
from infra.settings import load_settings
from tests.test_feedback_faults_kafka import check_exactly_once

TARGET = "bronze/feedback_events"
N_EVENTS = 3_000
KILL_AFTER = 1_000  # events sent before the kill
RESTART_BEFORE = 2_000  # the producer waits here for the restart: the rest is produced to the healed cluster
RATE = 250  # events/s: a stream, not one burst (the kill lands among in-flight sends)


# ---- the recipe, without a broker ------------------------------------------------------------------------
def _nodes(tmp_path: Path) -> list[ClusterNode]:
    return [ClusterNode(i, "127.0.0.1", 9000 + 2 * i, 9001 + 2 * i, tmp_path / f"n{i}") for i in (1, 2, 3)]


def _props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def test_node_properties_replicate_every_topic_as_the_settings_say(tmp_path: Path) -> None:
    s = load_settings(home=tmp_path, topic_replication_factor=3, topic_min_insync_replicas=2)
    nodes = _nodes(tmp_path)
    p = _props(node_properties(nodes[1], nodes, s))
    assert p["node.id"] == "2" and p["process.roles"] == "broker,controller"
    assert p["controller.quorum.voters"] == "1@127.0.0.1:9003,2@127.0.0.1:9005,3@127.0.0.1:9007"
    assert p["listeners"] == "PLAINTEXT://127.0.0.1:9004,CONTROLLER://127.0.0.1:9005"
    assert p["log.dirs"] == str(tmp_path / "n2")
    for key in ("default.replication.factor", "offsets.topic.replication.factor", "transaction.state.log.replication.factor"):
        assert p[key] == "3", key
    assert p["min.insync.replicas"] == p["transaction.state.log.min.isr"] == "2"
    assert p["unclean.leader.election.enable"] == "false"
    assert bootstrap_servers(nodes) == "127.0.0.1:9002,127.0.0.1:9004,127.0.0.1:9006"


@pytest.mark.parametrize(("rf", "isr"), [(4, 2), (3, 4)])
def test_node_properties_refuse_replication_the_cluster_cannot_hold(tmp_path: Path, rf: int, isr: int) -> None:
    s = load_settings(home=tmp_path, topic_replication_factor=rf, topic_min_insync_replicas=isr)
    nodes = _nodes(tmp_path)
    with pytest.raises(ConfigError, match="do not fit a cluster of 3 nodes"):
        node_properties(nodes[0], nodes, s)


# ---- three real nodes ----------------------------------------------------------------------------------
class Cluster:
    """Three combined broker + controller JVMs (256 MiB heap each) of this module, killed and restarted at will."""

    def __init__(self, home: Path) -> None:
        from tests.conftest import _jars_dir

        self.home = home
        self.nodes = [ClusterNode(i, "127.0.0.1", free_port(), free_port(), home / f"node-{i}" / "data") for i in (1, 2, 3)]
        self.settings = load_settings(home=home, jars_dir=_jars_dir(), kafka_bootstrap=bootstrap_servers(self.nodes),
                                      topic_replication_factor=3, topic_min_insync_replicas=2, topic_partitions=4)
        self.classpath = f"{require_jars(self.settings, 'kafka')}/*"
        self.java = services._java()
        self.procs: dict[int, subprocess.Popen] = {}

    def conf(self, node_id: int) -> Path:
        return self.home / f"node-{node_id}" / "server.properties"

    def format(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        cid = new_cluster_id()
        for node in self.nodes:
            self.conf(node.node_id).parent.mkdir(parents=True, exist_ok=True)
            self.conf(node.node_id).write_text(node_properties(node, self.nodes, self.settings))
        with ThreadPoolExecutor(3) as pool:  # one JVM each: side by side
            list(pool.map(lambda n: format_storage(self.conf(n.node_id), cluster_id=cid, classpath=self.classpath,
                                                   java=self.java), self.nodes))

    def start(self, node_id: int) -> None:
        d = self.home / f"node-{node_id}"
        with open(d / "stdout.log", "ab") as log:
            self.procs[node_id] = subprocess.Popen(
                [self.java, "-Xmx256m", "-Xms256m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
                 f"-Dlog4j2.configurationFile={services.INFRA_DIR / 'kafka-log4j2.properties'}", f"-Dkafka.logs.dir={d}",
                 "-cp", self.classpath, "kafka.Kafka", str(self.conf(node_id))],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def kill(self, node_id: int) -> None:
        proc = self.procs.pop(node_id)
        proc.kill()  # SIGKILL: no controlled shutdown, no leadership handed over
        proc.wait(30)

    def node(self, node_id: int) -> ClusterNode:
        return next(n for n in self.nodes if n.node_id == node_id)

    def brokers(self, node_id: int | None = None) -> set[int]:
        """The unfenced broker ids the cluster lists, asked of ``node_id`` (or any live node); empty if none answers."""
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        servers = f"{self.node(node_id).host}:{self.node(node_id).port}" if node_id else self.settings.bootstrap_servers
        try:
            admin = KafkaAdminClient(bootstrap_servers=servers, request_timeout_ms=3000)
        except (KafkaError, OSError, ValueError):
            return set()
        try:
            return {b["broker_id"] for b in admin.describe_cluster()["brokers"] if not b.get("is_fenced")}
        except (KafkaError, OSError):
            return set()
        finally:
            admin.close()

    def wait_brokers(self, want: set[int], *, ask: int | None = None, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while (got := self.brokers(ask)) != want:
            for nid, proc in self.procs.items():
                assert proc.poll() is None, f"node {nid} exited:\n{self.log_tail(nid)}"
            assert time.monotonic() < deadline, f"brokers {sorted(got)} after {timeout:.0f} s, want {sorted(want)}"
            time.sleep(0.5)

    def partitions(self, topic: str) -> list[dict]:
        """Per partition of ``topic``: partition, leader, replicas, isr (from the live nodes' metadata)."""
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=self.settings.bootstrap_servers, request_timeout_ms=5000)
        try:
            parts = admin.describe_topics([topic])[0]["partitions"]
        finally:
            admin.close()
        return sorted(({"partition": p["partition_index"], "leader": p["leader_id"], "replicas": p["replica_nodes"],
                        "isr": p["isr_nodes"]} for p in parts), key=lambda p: p["partition"])

    def coordinator(self, group: str) -> int:
        """The node coordinating ``group``: the leader of its ``__consumer_offsets`` partition (Kafka's partitionFor:
        abs(the group id's Java hashCode) % offsets.topic.num.partitions). ASCII group ids only."""
        h = 0
        for ch in group:
            h = (31 * h + ord(ch)) & 0xFFFFFFFF
        h = h - (1 << 32) if h >= 1 << 31 else h
        parts = self.partitions("__consumer_offsets")
        return next(p["leader"] for p in parts if p["partition"] == (0 if h == -(1 << 31) else abs(h)) % len(parts))

    def log_tail(self, node_id: int, n: int = 30) -> str:
        text = (self.home / f"node-{node_id}" / "stdout.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-n:])

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)  # the last node of a quorum cannot shut down in a controlled way: do not wait long
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.procs.clear()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("kafka-cluster"))
    c.format()
    try:
        for node in c.nodes:
            c.start(node.node_id)
        c.wait_brokers({1, 2, 3})
        yield c
    finally:
        c.stop()


def _wait(what: str, cond: Callable[[], bool], timeout: float, *, alive: Callable[[], None] = lambda: None) -> float:
    """Wait until ``cond()``; returns the seconds waited. ``alive`` raises if a worker died meanwhile."""
    t0 = time.monotonic()
    while not cond():
        alive()
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - t0


@pytest.mark.integration
@pytest.mark.slow
def test_topics_are_replicated_three_times_with_two_in_sync(cluster: Cluster) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    from feedback.kafka_io import describe_topic

    topic = f"rf-{uuid.uuid4().hex[:6]}"
    assert describe_topic(cluster.settings, topic)[0] == 4  # created by lakeloop, as the settings say
    parts = cluster.partitions(topic)
    assert [sorted(p["replicas"]) for p in parts] == [[1, 2, 3]] * 4
    admin = KafkaAdminClient(bootstrap_servers=cluster.settings.bootstrap_servers)
    try:
        res = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        admin.close()
    isr = res["topic"][topic]["min.insync.replicas"]
    assert (isr["value"], isr["config_source"]) == ("2", "DYNAMIC_TOPIC_CONFIG")  # set on the topic, not a broker default


@pytest.mark.integration
@pytest.mark.slow
def test_a_leader_killed_and_restarted_mid_stream_loses_and_doubles_nothing(cluster: Cluster, qa_feedback_path: Path,
                                                                             tmp_path: Path) -> None:
    topic, lake = f"cluster-{uuid.uuid4().hex[:8]}", tmp_path / "lake"
    s = cluster.settings.model_copy(update={"lake_root": str(lake), "feedback_topic": topic, "ingest_flush_mode": "thread"})
    events = load_events(qa_feedback_path, limit=N_EVENTS)
    assert len(events) == N_EVENTS
    payloads = [json.dumps(e, ensure_ascii=False, separators=(",", ":")).encode() for e in events]
    t0 = time.monotonic()
    producer = FeedbackProducer(s, topic=topic, linger_ms=5)  # creates the topic: RF 3, min ISR 2
    assert [len(p["replicas"]) for p in cluster.partitions(topic)] == [3] * 4

    # two ingestors of one group, each in its own thread (thread flush mode: no worker processes on 2 cores)
    stop, errors = threading.Event(), []
    said: list[list[str]] = [[], []]
    stream = get_stream(s, "feedback")
    ingestors = [Ingestor(s, stream, group=f"g-{topic}", instance_id=f"{topic}-{i}", policy=FlushPolicy(latency_s=0.3),
                          progress_every_s=5.0, say=lambda m, i=i: (said[i].append(m), print(f"[ingestor {i}] {m}")))
                 for i in range(2)]

    def ingest(ing: Ingestor) -> None:
        try:
            ing.run(stop=stop)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    # the producer: a stream at RATE events/s; waits before RESTART_BEFORE for the killed node to be back
    restarted, futures, acked_at = threading.Event(), [], []  # acked_at: when each acknowledgement came

    def produce() -> None:
        try:
            for i, payload in enumerate(payloads):
                if i == RESTART_BEFORE:
                    assert restarted.wait(300), "the node was not restarted"
                future = producer.send(payload)
                future.add_callback(lambda _meta: acked_at.append(time.monotonic()))
                futures.append(future)
                if i % 25 == 24:
                    time.sleep(25 / RATE)
            producer.flush(timeout_s=180)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def alive() -> None:
        if errors:
            raise errors[0]

    def delivered() -> int:
        return producer.report.delivered

    def ingested() -> int:
        return sum(ing.stats.valid for ing in ingestors)

    threads = [threading.Thread(target=ingest, args=(ing,), daemon=True, name=f"ingestor-{i}") for i, ing in enumerate(ingestors)]
    for t in threads:
        t.start()
    try:
        _wait("both ingestors to own partitions", lambda: all(any("@" in m for m in lines if "assigned" in m) for lines in said),
              120, alive=alive)
        sender = threading.Thread(target=produce, daemon=True, name="producer")
        sender.start()
        _wait(f"{KILL_AFTER} events sent and a committed batch from each ingestor",
              lambda: producer.report.sent >= KILL_AFTER and all(ing.stats.flushes >= 1 for ing in ingestors), 120, alive=alive)

        # the victim: the group's coordinator when it also leads partitions of the topic (the hardest case: the
        # ingestors lose their coordinator and the producer its leader at once), else the leader of the most partitions
        leaders = Counter(p["leader"] for p in cluster.partitions(topic))
        coordinator = cluster.coordinator(f"g-{topic}")
        victim = coordinator if leaders[coordinator] else leaders.most_common(1)[0][0]
        led = sorted(p["partition"] for p in cluster.partitions(topic) if p["leader"] == victim)
        # kill while sends are unacknowledged if that happens within 5 s (their retries are the idempotent path)
        deadline = time.monotonic() + 5
        while producer.report.sent == delivered() and time.monotonic() < deadline:
            time.sleep(0.001)
        sent_at_kill, delivered_at_kill = producer.report.sent, delivered()
        rebalances_at_kill = [ing.stats.rebalances for ing in ingestors]
        t_kill = time.monotonic()
        cluster.kill(victim)
        role = ", the group coordinator" if victim == coordinator else ""
        print(f"killed node {victim} (leader of partitions {led}{role}) after {sent_at_kill} sent, {delivered_at_kill} "
              f"acknowledged, {ingested()} ingested")
        # producing and ingesting go on without it: new leaders, acknowledgements from the two in-sync replicas
        _wait("acknowledgements after the kill", lambda: delivered() > sent_at_kill, 120, alive=alive)
        _wait(f"{RESTART_BEFORE} events acknowledged and ingested with node {victim} down",
              lambda: delivered() >= RESTART_BEFORE and ingested() >= RESTART_BEFORE, 180, alive=alive)
        new_leaders = {p["partition"]: p["leader"] for p in cluster.partitions(topic)}
        assert victim not in new_leaders.values() and -1 not in new_leaders.values(), new_leaders
        outage = time.monotonic() - t_kill

        cluster.start(victim)  # same storage: it rejoins and catches up from the others
        cluster.wait_brokers({1, 2, 3}, ask=victim)
        restarted.set()
        sender.join(300)
        assert not sender.is_alive(), "the producer did not finish"
        alive()
        report = producer.report
        assert (report.sent, report.delivered, report.failed) == (N_EVENTS, N_EVENTS, 0), report.errors

        acked = {}
        for future, payload in zip(futures, payloads):
            meta = future.get(timeout=1)
            acked[(meta.partition, meta.offset)] = payload.decode()
        assert len(acked) == N_EVENTS  # one offset per send: the retries after the kill were not written twice
        last = {}
        for p, o in acked:
            last[p] = max(last.get(p, -1), o)

        def landed() -> bool:
            if not DeltaTable.is_deltatable(str(lake / TARGET)):
                return False
            from feedback.delta_sink import app_id

            dt = DeltaTable(str(lake / TARGET))
            return all(dt.transaction_version(app_id(TARGET, topic, p)) == o for p, o in last.items())

        _wait("every acknowledged event in bronze", landed, 180, alive=alive)
        caught_up = _wait(f"node {victim} back in every partition's ISR",
                          lambda: all(len(p["isr"]) == 3 for p in cluster.partitions(topic)), 120)
        rebalances_before_stop = [ing.stats.rebalances for ing in ingestors]
    finally:
        stop.set()
        restarted.set()  # a producer still waiting goes on and ends
        for t in threads:
            t.join(120)
        with contextlib.suppress(ServiceError):  # its delivery report was checked above
            producer.close(timeout_s=10)
    alive()
    total = time.monotonic() - t0

    check_exactly_once(lake, topic, acked, {})  # each (partition, offset) once, raw bytes intact, offsets stored
    ids = [r["event_id"] for r in DeltaTable(str(lake / TARGET)).to_pyarrow_table(columns=["event_id"]).to_pylist()]
    assert len(ids) == len(set(ids)) == N_EVENTS
    assert set(ids) == {e["event_id"] for e in events}
    assert not DeltaTable.is_deltatable(str(lake / "bronze/dead_letters")) or DeltaTable(str(lake / "bronze/dead_letters")).count() == 0
    # the longest pause in acknowledgements while the node was down (seconds after the kill: from, to)
    down_acks = [0.0] + sorted(t - t_kill for t in acked_at if t_kill < t < t_kill + outage)
    pause = max(zip(down_acks, down_acks[1:]), key=lambda ab: ab[1] - ab[0], default=(0.0, 0.0))
    work = [ing.stats.valid for ing in ingestors]
    assert all(w > 0 for w in work) and sum(work) == N_EVENTS, work  # both did work; no row written twice
    print(f"cluster: {N_EVENTS} events, node {victim} killed (led {led}, coordinator {coordinator}) with {sent_at_kill} sent, "
          f"{sent_at_kill - delivered_at_kill} unacknowledged; no acknowledgement from {pause[0]:.1f} to {pause[1]:.1f} s after "
          f"the kill; down {outage:.1f} s; ISR full {caught_up:.1f} s after the restart; "
          f"rows per ingestor {work}, rebalances at the kill {rebalances_at_kill}, before the stop {rebalances_before_stop}; "
          f"total {total:.1f} s")
