"""How lakeloop reaches its lake: the delta-rs storage options (and Spark's s3a settings) of ``lake_root``.

A local lake needs none. An ``s3://`` lake gets the endpoint, region and addressing style from the settings,
credentials from the standard AWS variables (read when asked, never at import), and -- always -- conditional puts
(``aws_conditional_put=etag``: the commit file ``_delta_log/<version>.json`` is written with ``If-None-Match: *``), so
of two writers racing for one version exactly one commits and the other gets ``CommitFailedError``, as on a local
disk. The unsafe rename (``AWS_S3_ALLOW_UNSAFE_RENAME``) is refused: with it a racing commit silently replaces the
other. See docs/design/ingestion.md, "Object storage".
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from infra.errors import ConfigError
from infra.settings import Settings

StorageOptions = dict[str, str]
CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
UNSAFE = "AWS_S3_ALLOW_UNSAFE_RENAME"


def is_s3(uri: str) -> bool:
    return uri.startswith(("s3://", "s3a://"))


def storage_options(settings: Settings, *, uri: str | None = None, env: Mapping[str, str] | None = None) -> StorageOptions | None:
    """The options every delta-rs call on the lake passes (``DeltaTable(uri, storage_options=...)``); None: a local lake.

    ``uri``: a table or lake URI not derived from ``settings.lake`` (a training config's ``lake_root``, a pinned URI
    recorded in MLflow); its scheme decides instead."""
    if not is_s3(uri if uri is not None else settings.lake):
        return None
    env = os.environ if env is None else env
    if env.get(UNSAFE, "").strip().lower() in ("1", "true", "yes", "on"):
        raise ConfigError(f"{UNSAFE} is set: a racing Delta commit on S3 would silently replace another",
                          hint=f"unset {UNSAFE}; lakeloop commits with conditional puts (If-None-Match), which S3 supports")
    opts: StorageOptions = {
        "AWS_REGION": settings.s3_region,
        "AWS_CONDITIONAL_PUT": "etag",  # put-if-absent of the commit file; the default of object_store, made explicit
        "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "false" if settings.s3_path_style else "true",
    }
    if settings.s3_endpoint_url:
        opts["AWS_ENDPOINT_URL"] = settings.s3_endpoint_url
        if settings.s3_endpoint_url.startswith("http://"):
            opts["AWS_ALLOW_HTTP"] = "true"
    for name in CREDENTIAL_VARS:
        if env.get(name):
            opts[name] = env[name]
    return opts


def s3a_conf(settings: Settings, *, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Spark's Hadoop settings for the same bucket through s3a (``spark.hadoop.fs.s3a.*``); empty for a local lake.

    Spark's Delta writer on S3 has no put-if-absent of its own: a single Spark writer per table, or the delta-rs
    engine, stays the safe choice for concurrent commits (docs/design/ingestion.md, "Object storage")."""
    opts = storage_options(settings, env=env)
    if opts is None:
        return {}
    conf = {
        "spark.hadoop.fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "spark.hadoop.fs.s3a.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "spark.hadoop.fs.s3a.path.style.access": str(settings.s3_path_style).lower(),
        "spark.hadoop.fs.s3a.endpoint.region": settings.s3_region,
    }
    if settings.s3_endpoint_url:
        conf["spark.hadoop.fs.s3a.endpoint"] = settings.s3_endpoint_url
        conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] = str(settings.s3_endpoint_url.startswith("https://")).lower()
    if "AWS_ACCESS_KEY_ID" in opts:
        conf["spark.hadoop.fs.s3a.aws.credentials.provider"] = (
            "org.apache.hadoop.fs.s3a.TemporaryAWSCredentialsProvider" if "AWS_SESSION_TOKEN" in opts
            else "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider")
        conf["spark.hadoop.fs.s3a.access.key"] = opts["AWS_ACCESS_KEY_ID"]
        conf["spark.hadoop.fs.s3a.secret.key"] = opts.get("AWS_SECRET_ACCESS_KEY", "")
        if "AWS_SESSION_TOKEN" in opts:
            conf["spark.hadoop.fs.s3a.session.token"] = opts["AWS_SESSION_TOKEN"]
    return conf
