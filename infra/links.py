"""Links people open: pages of the Dagster and MLflow UIs, as a browser on another machine reaches them.

Every URL that goes into an alert, Dagster metadata or CLI output is built here, from the settings, and is
http(s): a ``file://`` URI opens only on the machine that wrote the file, so files people should read (the drift
report) are logged to MLflow and linked there. The bases are ``dagster_public_url`` / ``mlflow_public_url`` when
set, else the address lakeloop reaches the service at, with a wildcard bind address (``0.0.0.0``, ``::``) replaced
by this machine's host name and any ``user:password@`` left out. MLflow behind a non-http tracking URI (a local
store) has no pages: its builders return None, and callers say so in words.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from infra.settings import Settings

_WILDCARDS = ("0.0.0.0", "::", "")


def is_http(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def _public(url: str) -> str:
    """``url`` without credentials, trailing slash, query or fragment; a wildcard host becomes this host's name."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host in _WILDCARDS:
        host = socket.gethostname()
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def _local(settings: Settings, port: int) -> str:
    host = settings.bind_host
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def dagster_base(settings: Settings) -> str:
    return _public(settings.dagster_public_url or _local(settings, settings.dagster_port))


def mlflow_base(settings: Settings) -> str | None:
    """The MLflow UI's base URL; None when the tracking URI is not an http server and no public URL is set."""
    url = settings.mlflow_public_url or settings.mlflow_tracking_uri or _local(settings, settings.mlflow_port)
    return _public(url) if is_http(url) else None


def dagster_run(settings: Settings, run_id: str) -> str:
    return f"{dagster_base(settings)}/runs/{quote(run_id, safe='')}"


def mlflow_model_version(settings: Settings, version: str | int, *, name: str | None = None) -> str | None:
    base = mlflow_base(settings)
    model = quote(name or settings.registered_model_name, safe="")
    return f"{base}/#/models/{model}/versions/{quote(str(version), safe='')}" if base else None


def mlflow_run(settings: Settings, run_id: str, *, experiment_id: str | None = None) -> str | None:
    base = mlflow_base(settings)
    if base is None:
        return None
    if experiment_id is None:
        return f"{base}/#/runs/{quote(run_id, safe='')}"  # the UI redirects to the run's experiment
    return f"{base}/#/experiments/{quote(experiment_id, safe='')}/runs/{quote(run_id, safe='')}"


def mlflow_artifact(settings: Settings, *, experiment_id: str, run_id: str, path: str) -> str | None:
    """The run's artifact page with ``path`` open: MLflow shows HTML there (in a sandboxed frame)."""
    run = mlflow_run(settings, run_id, experiment_id=experiment_id)
    return f"{run}/artifacts/{quote(path, safe='/')}" if run else None


def mlflow_artifact_file(settings: Settings, *, run_id: str, path: str) -> str | None:
    """The artifact's bytes, as the MLflow server hands them out (a download; the UI reads the same route)."""
    base = mlflow_base(settings)
    return f"{base}/get-artifact?{urlencode({'path': path, 'run_uuid': run_id})}" if base else None


def checked(links: Mapping[str, str | None]) -> dict[str, str]:
    """``links`` without the missing ones; raises ValueError on one that is not http(s) (a ``file://`` URI)."""
    out = {name: url for name, url in links.items() if url}
    bad = {name: url for name, url in out.items() if not is_http(url)}
    if bad:
        raise ValueError(f"links people open must be http(s) URLs, not {bad}")
    return out
