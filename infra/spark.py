"""The Spark session factory: ``local[*]`` by default, any master by config, with delta-spark.

The delta-spark and spark-sql-kafka jars come from the cache that ``lakeloop infra fetch`` fills, so
Spark and delta-rs read and write the same tables without anything downloaded at run time. An s3:// lake adds
the s3a bundle and its settings (``infra.storage.s3a_conf``).

On a cluster (a master that is not ``local``) the session ships what executors cannot be assumed to have:
the jars through ``spark.jars`` (the driver serves them, every executor fetches them) and lakeloop's own
Python packages as one zip through ``SparkContext.addPyFile`` (``code_zip``: built from where the packages
are imported from, cached under ``<home>/spark`` by content hash). Executors run
``settings.spark_executor_python``, an environment with the third-party dependencies only.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from infra.errors import MissingDependencyError
from infra.jars import require_jars
from infra.settings import Settings
from infra.storage import is_s3, s3a_conf

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def _artifact(jar_name: str) -> str:
    """``hadoop-client-api-3.4.1.jar`` -> ``hadoop-client-api``."""
    return re.sub(r"-\d[\w.\-]*\.jar$", "", jar_name)


def _extra_jars(settings: Settings) -> list[str]:
    """Cached jars that the pyspark wheel does not already ship (no second Hadoop or Scala on the classpath); with an
    s3:// lake also the s3a bundle (hadoop-aws and the AWS SDK's S3 modules)."""
    import pyspark

    shipped = {_artifact(p.name) for p in (Path(pyspark.__file__).parent / "jars").glob("*.jar")}
    folders = [require_jars(settings, "spark")] + ([require_jars(settings, "s3a")] if is_s3(settings.lake) else [])
    return sorted(str(p) for d in folders for p in d.glob("*.jar") if _artifact(p.name) not in shipped)


# lakeloop's import packages (pyproject's packages.find): all of them go, so whatever a task imports is there
PACKAGES = ("infra", "feedback", "features", "trainers", "monitors", "orchestration")


def is_local(master: str) -> bool:
    return master.startswith("local")


def _package_files(root: Path) -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (root / pkg).rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo"))


def code_zip(settings: Settings) -> Path:
    """lakeloop's packages as a zip for ``addPyFile``, built from the folder they are imported from (an editable
    checkout or site-packages) and cached as ``<home>/spark/lakeloop-code-<content hash>.zip``."""
    root = Path(__file__).resolve().parents[1]
    files = _package_files(root)
    h = hashlib.sha256()
    for f in files:
        rel = f.relative_to(root).as_posix()
        data = f.read_bytes()
        h.update(f"{rel}\0{len(data)}\0".encode())
        h.update(data)
    target = settings.home / "spark" / f"lakeloop-code-{h.hexdigest()[:16]}.zip"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for f in files:  # fixed timestamps: the same content gives the same bytes
            z.writestr(zipfile.ZipInfo(f.relative_to(root).as_posix(), date_time=(1980, 1, 1, 0, 0, 0)), f.read_bytes(),
                       compress_type=zipfile.ZIP_DEFLATED)
    tmp.replace(target)  # atomic: a concurrent builder writes the same bytes
    return target


def executor_python(settings: Settings) -> str:
    """The interpreter executors run: the setting, else on local[*] PYSPARK_PYTHON or this one, and on a cluster
    Spark's own default (``python3`` on the workers' PATH; never the driver's path, which a remote worker lacks)."""
    if settings.spark_executor_python:
        return settings.spark_executor_python
    if is_local(settings.spark_master):
        return os.environ.get("PYSPARK_PYTHON") or sys.executable
    return "python3"


def _loopback(master: str) -> bool:
    host = re.sub(r"^spark://", "", master).split(",")[0].rsplit(":", 1)[0]
    return host in ("127.0.0.1", "localhost", "::1", "[::1]")


def spark_session(settings: Settings, *, app_name: str = "lakeloop", extra_conf: dict[str, str] | None = None) -> "SparkSession":
    """A SparkSession with the Delta SQL extensions and catalog; reuses an active one with the same master."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:  # pragma: no cover - pyspark is a core dependency
        raise MissingDependencyError("pyspark is not installed", hint="pip install -e .") from None
    from pyspark import SparkContext

    local = is_local(settings.spark_master)
    active = SparkContext._active_spark_context
    if active is not None and active.master != settings.spark_master:
        active.stop()  # getOrCreate would hand back a session on the other master
    jars = _extra_jars(settings)
    python = executor_python(settings)
    builder = (
        SparkSession.builder.appName(app_name)
        .master(settings.spark_master)
        .config("spark.jars", ",".join(jars))
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.driver.memory", settings.spark_driver_memory)
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.databricks.delta.schema.autoMerge.enabled", "true")
        .config("spark.sql.warehouse.dir", str(settings.home / "spark-warehouse"))
        .config("spark.pyspark.python", python)
    )
    if local or _loopback(settings.spark_master):
        builder = builder.config("spark.driver.host", settings.bind_host).config("spark.driver.bindAddress", settings.bind_host)
    if not local:
        builder = builder.config("spark.executor.memory", settings.spark_executor_memory)
    for k, v in {**s3a_conf(settings), **(extra_conf or {})}.items():  # an s3:// lake: endpoint, path style, credentials
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    sc = spark.sparkContext
    # what Python UDFs and RDD functions name as their interpreter (pyspark reads PYSPARK_PYTHON once, at start): on
    # local[*] this venv (with pyarrow), not whatever `python3` is on PATH; on a cluster the workers' environment
    sc.pythonExec = python
    if not local:
        code = code_zip(settings)
        if code.name not in sc._python_includes:  # type: ignore[attr-defined]
            sc.addPyFile(str(code))
            # the driver keeps importing from where it did (package data read next to the modules stays reachable)
            sys.path[:] = [p for p in sys.path if not p.endswith(code.name)]
    return spark
