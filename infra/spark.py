"""The Spark session factory: ``local[*]`` by default, any master by config, with delta-spark.

The delta-spark and spark-sql-kafka jars come from the cache that ``lakeloop infra fetch`` fills, so
Spark and delta-rs read and write the same tables without anything downloaded at run time. An s3:// lake adds
the s3a bundle and its settings (``infra.storage.s3a_conf``).
"""

from __future__ import annotations

import os
import re
import sys
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


def spark_session(settings: Settings, *, app_name: str = "lakeloop", extra_conf: dict[str, str] | None = None) -> "SparkSession":
    """A SparkSession with the Delta SQL extensions and catalog; reuses an active one with the same master."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:  # pragma: no cover - pyspark is a core dependency
        raise MissingDependencyError("pyspark is not installed", hint="pip install -e .") from None
    jars = _extra_jars(settings)
    # Python workers must run this interpreter (the venv, with pyarrow), not whatever `python3` is on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
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
    )
    if settings.spark_master.startswith("local"):
        builder = builder.config("spark.driver.host", settings.bind_host).config("spark.driver.bindAddress", settings.bind_host)
    for k, v in {**s3a_conf(settings), **(extra_conf or {})}.items():  # an s3:// lake: endpoint, path style, credentials
        builder = builder.config(k, v)
    return builder.getOrCreate()
