"""The local platform against the real services: Kafka, Spark + delta-rs, MLflow, Dagster."""

from __future__ import annotations

import uuid

import pandas as pd
import pyarrow as pa
import pytest

from tests.dagster_gql import latest_materialization_metadata, launch_assets, wait_for_run

pytestmark = pytest.mark.integration


def test_kafka_produce_and_consume_through_the_real_broker(kafka) -> None:
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    topic = f"smoke-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    for i in range(50):
        producer.send(topic, key=str(i % 5).encode(), value=f"m{i}".encode())
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(
        topic, bootstrap_servers=kafka.bootstrap_servers, auto_offset_reset="earliest", consumer_timeout_ms=10_000
    )
    got = sorted(m.value.decode() for m in consumer)
    consumer.close()
    assert got == sorted(f"m{i}" for i in range(50))


@pytest.mark.slow
def test_spark_and_delta_rs_read_each_others_tables(platform, tmp_path) -> None:
    from deltalake import DeltaTable, write_deltalake

    from infra.spark import spark_session

    from infra.jars import fetch_jars

    settings = platform.settings
    fetch_jars(settings)
    spark = spark_session(settings, app_name="lakeloop-test")
    by_spark = str(tmp_path / "by_spark")
    spark.createDataFrame([(1, "a"), (2, "b"), (3, "c")], "id INT, name STRING").write.format("delta").save(by_spark)
    dt = DeltaTable(by_spark)
    assert sorted(dt.to_pyarrow_table().to_pydict()["id"]) == [1, 2, 3]

    by_rs = str(tmp_path / "by_rs")
    write_deltalake(by_rs, pa.table({"id": [10, 20], "name": ["x", "y"]}))
    write_deltalake(by_rs, pa.table({"id": [30], "name": ["z"]}), mode="append")
    rows = spark.read.format("delta").load(by_rs).orderBy("id").collect()
    assert [r.id for r in rows] == [10, 20, 30]
    # and Spark appends to a delta-rs table, read back by delta-rs at the new version
    spark.createDataFrame([(40, "w")], "id LONG, name STRING").write.format("delta").mode("append").save(by_rs)
    assert DeltaTable(by_rs).version() == 2
    assert sorted(DeltaTable(by_rs).to_pyarrow_table().to_pydict()["id"]) == [10, 20, 30, 40]


def test_mlflow_run_register_and_alias(mlflow_server) -> None:
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(mlflow_server.tracking_uri)
    mlflow.set_experiment("platform-smoke")

    class Constant(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):  # noqa: ANN001
            return [0.5] * len(model_input)

    with mlflow.start_run() as run:
        mlflow.log_param("p", 1)
        for step in range(3):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        info = mlflow.pyfunc.log_model(name="model", python_model=Constant())
    client = MlflowClient(mlflow_server.tracking_uri)
    name = f"smoke-{uuid.uuid4().hex[:6]}"
    mv = mlflow.register_model(info.model_uri, name)
    client.set_registered_model_alias(name, "champion", mv.version)
    assert client.get_model_version_by_alias(name, "champion").version == mv.version
    assert client.get_run(run.info.run_id).data.metrics["loss"] == pytest.approx(1 / 3)
    loaded = mlflow.pyfunc.load_model(f"models:/{name}@champion")  # artifacts come back through the server's proxy
    assert list(loaded.predict(pd.DataFrame({"x": [1, 2]}))) == [0.5, 0.5]


@pytest.mark.slow
def test_dagster_webserver_materializes_an_asset_like_the_ui(dagster_platform) -> None:
    url = dagster_platform.dagster_url
    run_id = launch_assets(url, [["lake_catalog"]])
    assert wait_for_run(url, run_id, timeout=300) == "SUCCESS"
    meta = latest_materialization_metadata(url, ["lake_catalog"])
    assert meta["__run_id"] == run_id
    assert meta["tables_registered"] >= 9


def test_definitions_load() -> None:
    from orchestration.definitions import defs

    repo = defs.get_repository_def()
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert "lake_catalog" in keys
