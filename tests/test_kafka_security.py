"""Kafka security pass-through: the settings' TLS / SASL reach every client (producer, consumers, admin, Spark).

The integration test runs a real KRaft broker whose only client listener is SASL_PLAINTEXT with the PLAIN mechanism
(a managed Kafka's usual set-up minus TLS), on loopback: lakeloop's producer, topic admin, offset reader and ingestor
consumer work through it with the settings' credentials, and a client without them is refused."""

from __future__ import annotations

import base64
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from infra import kafka_security, services
from infra.errors import ConfigError
from infra.jars import require_jars
from infra.ports import free_port
from infra.settings import Settings, load_settings

PASSWORD = "app-secret-0123"


def test_plaintext_is_bootstrap_servers_only(settings: Settings) -> None:
    assert kafka_security.client_config(settings) == {"bootstrap_servers": settings.bootstrap_servers}
    assert kafka_security.spark_options(settings) == {"kafka.bootstrap.servers": settings.bootstrap_servers}


def test_sasl_ssl_reaches_kafka_python_and_spark_options(tmp_path: Path) -> None:
    ca, cert, key = (tmp_path / n for n in ("ca.pem", "client.pem", "client.key"))
    for f, text in ((ca, "CA"), (cert, "CERT"), (key, "KEY")):
        f.write_text(text)
    s = load_settings(home=tmp_path, kafka_bootstrap="kafka.example:9093", kafka_security_protocol="SASL_SSL",
                      kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="lake", kafka_sasl_password='p"w',
                      kafka_ssl_cafile=ca, kafka_ssl_certfile=cert, kafka_ssl_keyfile=key)
    cfg = kafka_security.client_config(s)
    assert cfg == {"bootstrap_servers": "kafka.example:9093", "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                   "sasl_plain_username": "lake", "sasl_plain_password": 'p"w', "ssl_check_hostname": True,
                   "ssl_cafile": str(ca), "ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    opts = kafka_security.spark_options(s)
    assert opts["kafka.security.protocol"] == "SASL_SSL" and opts["kafka.sasl.mechanism"] == "SCRAM-SHA-512"
    assert opts["kafka.sasl.jaas.config"] == ('org.apache.kafka.common.security.scram.ScramLoginModule required '
                                              'username="lake" password="p\\"w";')
    assert (opts["kafka.ssl.truststore.location"], opts["kafka.ssl.keystore.key"]) == (str(ca), "KEY")
    assert 'p"w' not in repr(s) and 'p"w' not in s.model_dump_json()  # a SecretStr: never printed
    assert s.env()["LAKELOOP_KAFKA_SASL_PASSWORD"] == 'p"w'  # but handed to the child processes that connect


@pytest.mark.parametrize(("kw", "missing"), [
    ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "PLAIN"}, "LAKELOOP_KAFKA_SASL_USERNAME, LAKELOOP_KAFKA_SASL_PASSWORD"),
    ({"kafka_sasl_username": "u"}, "SASL settings are set but kafka_security_protocol is PLAINTEXT"),
    ({"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "/nonexistent/ca.pem"}, "is not a readable file"),
])
def test_incomplete_security_settings_say_what_is_missing(tmp_path: Path, kw: dict, missing: str) -> None:
    s = load_settings(home=tmp_path, **kw)
    with pytest.raises(ConfigError, match=missing):
        kafka_security.client_config(s)


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A real KRaft broker whose client listener takes SASL_PLAINTEXT / PLAIN only (user lakeloop)."""
    from tests.conftest import _jars_dir

    home = tmp_path_factory.mktemp("sasl-kafka")
    s = load_settings(home=home, jars_dir=_jars_dir(), kafka_port=free_port(), kafka_controller_port=free_port(),
                      kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="PLAIN",
                      kafka_sasl_username="lakeloop", kafka_sasl_password=PASSWORD, topic_partitions=2)
    host, port, ctl = s.bind_host, s.kafka_port, s.kafka_controller_port
    jaas = ('org.apache.kafka.common.security.plain.PlainLoginModule required username="broker" password="broker-secret" '
            f'user_broker="broker-secret" user_lakeloop="{PASSWORD}";')
    replaced = {
        "listeners": f"SASL_PLAINTEXT://{host}:{port},CONTROLLER://{host}:{ctl}",
        "advertised.listeners": f"SASL_PLAINTEXT://{host}:{port}",
        "inter.broker.listener.name": "SASL_PLAINTEXT",
        "listener.security.protocol.map": "SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT",
    }
    lines = [f"{k}={replaced.pop(k)}" if (k := line.partition("=")[0]) in replaced else line
             for line in services.kafka_properties(s).splitlines()]
    lines += ["sasl.enabled.mechanisms=PLAIN", "sasl.mechanism.inter.broker.protocol=PLAIN",
              f"listener.name.sasl_plaintext.plain.sasl.jaas.config={jaas}"]
    s.kafka_data_dir.mkdir(parents=True)
    conf = s.kafka_data_dir / "server.properties"
    conf.write_text("\n".join(lines) + "\n")
    classpath = f"{require_jars(s, 'kafka')}/*"
    cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=").replace("-", "x")
    subprocess.run(["java", "-cp", classpath, "kafka.tools.StorageTool", "format", "-t", cid, "-c", str(conf)],
                   check=True, capture_output=True)
    log = (home / "kafka.log").open("wb")
    proc = subprocess.Popen(["java", "-Xmx256m", "-cp", classpath, "kafka.Kafka", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while not services.kafka_healthy(s.bootstrap_servers, 2.0, settings=s):
            assert proc.poll() is None, (home / "kafka.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the SASL broker did not come up in 90 s"
            time.sleep(0.5)
        yield s
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.mark.integration
@pytest.mark.slow
def test_every_client_authenticates_with_the_settings_and_a_client_without_them_is_refused(sasl_broker: Settings) -> None:
    from feedback.kafka_io import describe_topic, make_consumer, offset_bounds
    from feedback.producer import FeedbackProducer

    s = sasl_broker
    topic = f"fb-sasl-{uuid.uuid4().hex[:6]}"
    assert describe_topic(s, topic)[0] == 2  # admin: topic created through SASL
    with FeedbackProducer(s, topic=topic) as producer:  # idempotent producer, acks=all
        for i in range(20):
            producer.send(json.dumps({"i": i}).encode(), key=str(i))
    assert sum(offset_bounds(s, topic)[1].values()) == 20
    consumer = make_consumer(s, group=f"g-{topic}")  # the ingestor's consumer
    try:
        consumer.subscribe([topic])
        got: list[int] = []
        deadline = time.monotonic() + 30
        while len(got) < 20 and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                got += [json.loads(r.value)["i"] for r in records]
        assert sorted(got) == list(range(20))
    finally:
        consumer.close()

    plain = load_settings(home=s.home, kafka_bootstrap=s.bootstrap_servers)  # no credentials
    assert not services.kafka_healthy(plain.bootstrap_servers, 2.0, settings=plain)
    wrong = s.model_copy(update={"kafka_sasl_password": SecretStr("not-the-password")})
    assert not services.kafka_healthy(wrong.bootstrap_servers, 2.0, settings=wrong)


def test_topics_are_created_with_the_settings_replication(tmp_path: Path) -> None:
    from feedback.kafka_io import new_topic

    t = new_topic(load_settings(home=tmp_path, topic_replication_factor=3, topic_min_insync_replicas=2), "t", 4)
    assert (t.name, t.num_partitions, t.replication_factor, t.topic_configs) == ("t", 4, 3, {"min.insync.replicas": "2"})
    assert new_topic(load_settings(home=tmp_path), "t", 4).replication_factor == 1
