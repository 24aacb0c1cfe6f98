"""Curation on a Spark standalone cluster whose executors do not have lakeloop installed, on an S3 lake.

The fixture starts a master and two workers (``infra.spark_cluster``, 1 core and 1 GiB each) on loopback;
their executors run a separate Python environment made here that sees the venv's third-party packages but not
lakeloop, so every lakeloop function a task calls must come from the zip the session ships (``infra.spark``).
The cluster's lake is on S3 (moto's server, ``tests/moto_s3.py``), read and written through s3a, as a cluster whose
workers share no disk with the driver needs: one Spark curation proves the shipped code, the cluster and s3a.
Size: 330 qa_feedback events on one day; ~2.5 min on 2 cores (the time is Spark job overhead, ~250 tasks).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from features import lake
from features.config import CurationConfig
from features.engine import STAGES, curate
from features.manifest import content_hash
from infra.settings import load_settings
from infra.spark import code_zip, executor_python
from infra.storage import storage_options
from infra.tables import table_uri
from tests.conftest import _jars_dir
from tests.curation_fixtures import START
from tests.moto_s3 import ACCESS_KEY, SECRET_KEY, moto_s3
from tests.test_lake_s3 import bucket_of, ingest, qa_values, s3_settings
from trainers.data import EXAMPLES

KEY = b"cluster-key-0123456789abcdef"
TABLES = ("silver/feedback", "silver/minhash_index", "gold/training_examples", "gold/preference_pairs")


def test_code_zip_holds_every_package_and_is_cached_by_content(tmp_path) -> None:
    s = load_settings(home=tmp_path)
    z = code_zip(s)
    assert z.parent == tmp_path / "spark" and z.name.startswith("lakeloop-code-")
    names = set(zipfile.ZipFile(z).namelist())
    assert {"features/engine.py", "features/silver.py", "infra/spark.py", "orchestration/cli.py", "feedback/__init__.py"} <= names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    mtime = z.stat().st_mtime_ns
    assert code_zip(s) == z and z.stat().st_mtime_ns == mtime  # the same content: the cached file, not rebuilt


@pytest.mark.parametrize(("master", "setting", "expected"), [
    ("local[*]", None, "/driver/env/python"),
    ("spark://10.0.0.5:7077", None, "python3"),
    ("spark://10.0.0.5:7077", "/opt/env/bin/python", "/opt/env/bin/python"),
    ("local[2]", "/opt/env/bin/python", "/opt/env/bin/python"),
])
def test_executor_python(tmp_path, monkeypatch, master, setting, expected) -> None:
    monkeypatch.setenv("PYSPARK_PYTHON", "/driver/env/python")  # the driver's: used on local[*] only, and below the setting
    assert executor_python(load_settings(home=tmp_path, spark_master=master, spark_executor_python=setting)) == expected


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYSPARK_PYTHON")}


@pytest.fixture(scope="module")
def executor_env(tmp_path_factory) -> str:
    """A venv with this venv's site-packages on its path (a .pth line) but not lakeloop: the editable install's
    finder is a .pth of that folder, and .pth files of a folder added by a .pth line are not processed."""
    from infra.spark_cluster import executor_venv

    root = tmp_path_factory.mktemp("executor-venv")
    python = executor_venv(root / "venv")
    probe = "import pyspark, pyarrow, polars, xxhash; import importlib.util as u; print(u.find_spec('features'), u.find_spec('infra'))"
    out = subprocess.run([python, "-c", probe], cwd=root, env=_clean_env(), capture_output=True, text=True, check=True).stdout
    assert out.split() == ["None", "None"], out  # third-party packages yes, lakeloop no
    assert subprocess.run([python, "-c", "import features"], cwd=root, env=_clean_env(), capture_output=True).returncode != 0
    return python


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from infra.spark_cluster import start_local_cluster

    with start_local_cluster(tmp_path_factory.mktemp("spark-cluster"), workers=2, cores=1, memory="1g") as c:
        yield c


def _events_by_executor(log_dir: Path) -> tuple[dict[str, str], Counter]:
    """From the application's event log: executor id -> the worker's log URL, and successful tasks per executor."""
    (log,) = [p for p in log_dir.iterdir() if p.is_file()]
    workers: dict[str, str] = {}
    tasks: Counter = Counter()
    for line in log.read_text().splitlines():
        e = json.loads(line)
        if e["Event"] == "SparkListenerExecutorAdded":
            workers[e["Executor ID"]] = e["Executor Info"]["Log Urls"]["stderr"]
        elif e["Event"] == "SparkListenerTaskEnd" and e["Task End Reason"]["Reason"] == "Success":
            tasks[e["Task Info"]["Executor ID"]] += 1
    return workers, tasks


@pytest.fixture()
def fresh_jvm() -> None:
    """A JVM of its own for the cluster session: Spark reads ``spark.jars`` onto the driver's classpath when it
    launches the JVM, so a JVM an earlier test started (a local lake: no s3a bundle) cannot load S3AFileSystem.
    A deployment's process has one lake, so its first session already has the right jars."""
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        active.stop()
    gateway = SparkContext._gateway  # type: ignore[attr-defined]
    if gateway is not None:
        proc = getattr(gateway, "proc", None)
        gateway.shutdown()
        if proc is not None:
            proc.kill()
            proc.wait()
        SparkContext._gateway = None  # type: ignore[attr-defined]
        SparkContext._jvm = None  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def s3():
    with moto_s3() as server:
        yield server


@pytest.mark.integration
@pytest.mark.slow
def test_curation_on_a_two_worker_cluster_over_s3a_matches_the_local_engine(cluster, executor_env, s3, fresh_jvm, tmp_path,
                                                                            qa_feedback_path, monkeypatch) -> None:
    from features import pipeline_spark
    from infra.jars import fetch_jars
    from infra.spark import spark_session

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)  # the test server's credentials, as a deployment's would be
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_S3_ALLOW_UNSAFE_RENAME", "AWS_ENDPOINT_URL", "AWS_CONDITIONAL_PUT"):
        monkeypatch.delenv(name, raising=False)
    values = qa_values(qa_feedback_path, 330, days=1)  # 330 events, one day (cross-day runs: test_curation_spark)
    days = [START]
    local_s = load_settings(home=tmp_path / "local", autopilot=False)
    spark_s = s3_settings(s3, tmp_path / "spark", jars_dir=_jars_dir(), spark_master=cluster.master_url,
                          spark_executor_python=executor_env, spark_driver_memory="1g", spark_executor_memory="768m")
    fetch_jars(spark_s)  # the s3a bundle (hadoop-aws of pyspark's Hadoop), cached
    out, seconds = {}, {}
    events_dir = tmp_path / "spark-events"
    events_dir.mkdir()
    spark = spark_session(spark_s, app_name="lakeloop-curation", extra_conf={
        **pipeline_spark.CONF, "spark.eventLog.enabled": "true", "spark.eventLog.dir": str(events_dir),
        "spark.eventLog.rolling.enabled": "false", "spark.eventLog.compress": "false"})
    try:
        assert spark.sparkContext.master == cluster.master_url
        assert spark.conf.get("spark.hadoop.fs.s3a.endpoint") == s3.endpoint
        for engine, s in (("local", local_s), ("spark", spark_s)):
            ingest(s, values)  # the real sink: delta-rs writes bronze (to S3 for the cluster, with conditional puts)
            cfg = CurationConfig(engine=engine)
            t0 = time.perf_counter()
            reports = [curate(stage, s, d, cfg=cfg, key=KEY) for d in days for stage in STAGES]
            seconds[engine] = time.perf_counter() - t0
            out[engine] = ({t: lake.read(table_uri(s, t), storage_options=storage_options(s)) for t in TABLES}, reports)

        def probe(_: object) -> list[tuple[int, str, str]]:  # runs in the executors' Python workers
            import os
            import sys

            import features.silver
            return [(os.getpid(), sys.executable, features.silver.__file__)]

        seen = spark.sparkContext.parallelize(range(4), 4).mapPartitions(probe).collect()
    finally:
        spark.stop()
    print(f"curation of {len(values)} events on 1 day: local {seconds['local']:.1f}s, 2-worker cluster over s3a {seconds['spark']:.1f}s")
    (lt, lr), (st, sr) = out["local"], out["spark"]
    for t in TABLES:
        assert lt[t].height == st[t].height > 0, t
        if t != "silver/feedback":  # silver's content also holds ingested_at, which the two ingests set apart
            assert content_hash(lt[t]) == content_hash(st[t].select(lt[t].columns)), t
    # the tables are on S3, written through s3a, and delta-rs reads what Spark wrote there
    assert any("_delta_log/" in k for k in s3.keys(bucket_of(spark_s), "lake/gold/training_examples/"))
    assert lake.read(table_uri(spark_s, EXAMPLES), storage_options=storage_options(spark_s)).height == lt[EXAMPLES].height
    assert [(r.table, r.day, r.rows_out, dict(r.drops)) for r in lr] == [(r.table, r.day, r.rows_out, dict(r.drops)) for r in sr]
    assert all(r.engine == "spark" for r in sr)
    # lakeloop's code in the executors came from the shipped zip, run by the executor environment's Python
    assert {exe for _, exe, _ in seen} == {executor_env}
    assert all(".zip" in path and "lakeloop-code-" in path for _, _, path in seen), seen
    assert os.getpid() not in {pid for pid, _, _ in seen}
    # every task of the curation ran in the two executors, one on each worker, and both did work
    workers, tasks = _events_by_executor(events_dir)
    assert len(workers) == 2 and len({url.split("/logPage")[0] for url in workers.values()}) == 2, workers
    assert set(tasks) == set(workers) and min(tasks.values()) > 0, tasks
    print(f"successful tasks per executor: {dict(tasks)}")


@pytest.mark.integration
@pytest.mark.slow
def test_spark_cluster_command_starts_workers_and_stops_them_on_sigterm(tmp_path) -> None:
    import signal
    import urllib.request

    from infra.ports import free_port

    port = free_port()
    env = {**os.environ, "LAKELOOP_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen([sys.executable, "-m", "orchestration.cli", "spark-cluster", "up", "--workers", "1", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if "Ctrl-C stops" in line:
                break
        text = "".join(lines)
        assert f"LAKELOOP_SPARK_MASTER=spark://127.0.0.1:{port}" in text, text
        ui = text.split("(UI ")[1].split(")")[0]
        with urllib.request.urlopen(f"{ui}/json/", timeout=5) as r:
            state = json.loads(r.read())
        assert [w["state"] for w in state["workers"]] == ["ALIVE"] and state["workers"][0]["cores"] == 1
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "Spark cluster stopped." in rest
    with pytest.raises(OSError):  # the master is gone with its port
        urllib.request.urlopen(f"{ui}/json/", timeout=2)
