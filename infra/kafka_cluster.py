"""A replicated KRaft cluster's node properties: the recipe lakeloop's cluster test runs.

`lakeloop up` starts one broker (``infra.services.kafka_properties``): a lost disk or a killed process
loses or stalls the feedback stream. On a cluster every node below is a broker and a controller
(combined mode) and every topic, lakeloop's and Kafka's internal ones, is replicated:

- three nodes, ``node.id`` 1..3, each voting in the controller quorum (``controller.quorum.voters``
  names all three controller ports), every storage formatted with the same cluster id;
- lakeloop's topics with ``LAKELOOP_TOPIC_REPLICATION_FACTOR=3`` and ``LAKELOOP_TOPIC_MIN_INSYNC_REPLICAS=2``
  (``feedback.kafka_io.new_topic``), the consumer offsets and transaction state topics likewise;
- ``unclean.leader.election.enable=false``: a replica that missed acknowledged writes never leads.

With the producer's ``acks=all`` and idempotence (``feedback.producer``) an acknowledged event is on
two replicas at least, so one node can die at any moment without losing or doubling one; with two
down, producing stops (NotEnoughReplicas) rather than risking a loss. ``tests/test_kafka_cluster.py``
runs three such nodes on loopback, kills one mid-stream and checks bronze (docs/design/ingestion.md,
"On a cluster").

Usage (one machine per node in production; ports and directories are yours)::

    nodes = [ClusterNode(i, host="kafka-1", port=9092, controller_port=9093, log_dir=Path("/var/lib/kafka")) ...]
    conf.write_text(node_properties(nodes[0], nodes, settings))
    format_storage(conf, cluster_id=new_cluster_id(), classpath=...)   # once per node, the same id on all
    java -cp <kafka jars>/* kafka.Kafka <conf>
    LAKELOOP_KAFKA_BOOTSTRAP=$(bootstrap_servers(nodes))
"""

from __future__ import annotations

import base64
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from infra.errors import ConfigError, ServiceError
from infra.settings import Settings


@dataclass(frozen=True)
class ClusterNode:
    """One combined broker + controller: its id, where it listens, where it keeps its data."""

    node_id: int
    host: str
    port: int  # clients and replication (PLAINTEXT)
    controller_port: int  # the KRaft quorum (CONTROLLER)
    log_dir: Path


def bootstrap_servers(nodes: Sequence[ClusterNode]) -> str:
    """``LAKELOOP_KAFKA_BOOTSTRAP`` for the cluster: every node, so a client starts while any one is down."""
    return ",".join(f"{n.host}:{n.port}" for n in nodes)


def node_properties(node: ClusterNode, nodes: Sequence[ClusterNode], settings: Settings, *,
                    overrides: Mapping[str, str] | None = None) -> str:
    """``server.properties`` of ``node`` in the cluster ``nodes``. Replication of every topic follows the
    settings (``topic_replication_factor``, ``topic_min_insync_replicas``), which must fit the cluster."""
    rf, isr = settings.topic_replication_factor, settings.topic_min_insync_replicas or 1
    if rf > len(nodes) or isr > rf:
        raise ConfigError(f"replication factor {rf} and min.insync.replicas {isr} do not fit a cluster of {len(nodes)} nodes",
                          hint="LAKELOOP_TOPIC_REPLICATION_FACTOR <= nodes and LAKELOOP_TOPIC_MIN_INSYNC_REPLICAS <= it")
    if node not in nodes or len({n.node_id for n in nodes}) != len(nodes):
        raise ConfigError(f"node {node.node_id} must be one of the cluster's nodes, whose ids must differ")
    voters = ",".join(f"{n.node_id}@{n.host}:{n.controller_port}" for n in nodes)
    props = {
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        "controller.quorum.voters": voters,
        "listeners": f"PLAINTEXT://{node.host}:{node.port},CONTROLLER://{node.host}:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{node.host}:{node.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(node.log_dir),
        "num.partitions": str(settings.topic_partitions),
        "default.replication.factor": str(rf),
        "min.insync.replicas": str(isr),
        "unclean.leader.election.enable": "false",
        "offsets.topic.replication.factor": str(rf),
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": str(rf),
        "transaction.state.log.min.isr": str(isr),
        "share.coordinator.state.topic.replication.factor": str(rf),
        "share.coordinator.state.topic.min.isr": str(isr),
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        "message.max.bytes": "8388608",
        "replica.fetch.max.bytes": "8388608",
        "log.retention.hours": "168",
        **(overrides or {}),
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


def new_cluster_id() -> str:
    """A KRaft cluster id (base64 of a UUID), never starting with '-' (the format tool would read an option)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=").replace("-", "x")


def format_storage(conf: Path, *, cluster_id: str, classpath: str, java: str = "java") -> None:
    """Format one node's storage (``kafka-storage.sh format``); every node of a cluster takes the same id."""
    proc = subprocess.run([java, "-cp", classpath, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(conf)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ServiceError(f"formatting Kafka storage of {conf} failed: {(proc.stderr or proc.stdout).strip()[-500:]}",
                           hint="remove the node's log.dirs and format again")
