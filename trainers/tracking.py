"""The one wrapper around MLflow tracking: runs, params, per-step metrics, system info, the config,
dataset inputs (Delta URI + version + content hash) and the git commit. Everything else in lakeloop
talks to MLflow through this module or through ``trainers.registry``."""

from __future__ import annotations

import functools
import os
import platform
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from infra.errors import ServiceError
from infra.mlflow_auth import use_credentials
from infra.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]

# MLflow's client retries every request 7 times with exponential backoff (about 4 minutes) and waits up to 120 s
# for each answer, so a stopped server looked like a hang. lakeloop's server is local: fail within ~10 s instead
# (retries at 1, 2, 4 s). An MLFLOW_HTTP_REQUEST_* variable set in the environment still wins.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
_RETRIES_LOCK = threading.Lock()
P = ParamSpec("P")
R = TypeVar("R")


def client(settings: Settings) -> Any:
    """An MlflowClient on the settings' tracking server (also the registry), with bounded HTTP retries."""
    import mlflow
    from mlflow import MlflowClient

    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)  # read by MLflow at each request
    use_credentials(settings)  # MLflow's basic-auth app: lakeloop's user
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def server_answers(tracking_uri: str, timeout: float = 3.0) -> bool:
    """The MLflow server at ``tracking_uri`` answers its health check (True for non-HTTP stores: nothing to probe)."""
    import requests

    if not tracking_uri.startswith(("http://", "https://")):
        return True
    try:
        return requests.get(f"{tracking_uri.rstrip('/')}/health", timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def unreachable_error(settings: Settings, doing: str, exc: BaseException) -> ServiceError | None:
    """A ServiceError naming the server when ``exc`` came from MLflow being down (probed now), else None."""
    if server_answers(settings.tracking_uri):
        return None
    return ServiceError(
        f"MLflow at {settings.tracking_uri} is not reachable while {doing} ({type(exc).__name__})",
        hint="start it with `lakeloop up` (`lakeloop status` shows what is down) or point LAKELOOP_MLFLOW_TRACKING_URI at a "
        "running server, then run the step again: registration is idempotent",
    )


@contextmanager
def reachable(settings: Settings, doing: str) -> Iterator[None]:
    """MLflow errors inside become a ServiceError naming the server when it does not answer; other errors pass."""
    import requests
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (MlflowException, requests.RequestException) as exc:
        err = unreachable_error(settings, doing, exc)
        if err is None:
            raise
        raise err from exc


def needs_mlflow(doing: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a function whose first argument is the Settings: ``reachable(settings, doing)`` around its body."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def inner(*args: P.args, **kwargs: P.kwargs) -> R:
            settings = args[0]
            if not isinstance(settings, Settings):
                raise TypeError(f"{fn.__name__}: @needs_mlflow wants the Settings as the first argument, got {type(settings).__name__}")
            with reachable(settings, doing):
                return fn(*args, **kwargs)

        return inner

    return wrap


@contextmanager
def single_attempt() -> Iterator[None]:
    """MLflow requests inside are sent once: no client retries. For creates: MLflow's client resends a POST whose
    answer was lost, and the server then creates a second object; the caller looks up what landed instead.
    (MLflow reads the retry count from the environment per request, so this holds a process-wide lock.)"""
    key = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
    with _RETRIES_LOCK:
        before = os.environ.get(key)
        os.environ[key] = "0"
        try:
            yield
        finally:
            if before is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = before


def git_commit() -> str:
    """The commit of the code that runs, with '+dirty' when the tree has changes; 'unknown' outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return f"{sha}+dirty" if dirty else sha
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def system_info() -> dict[str, str]:
    import torch

    info = {
        "sys.python": platform.python_version(),
        "sys.platform": platform.platform(),
        "sys.host": socket.gethostname(),
        "sys.torch": torch.__version__,
        "sys.cpu_threads": str(torch.get_num_threads()),
        "sys.cuda": str(torch.cuda.is_available()),
    }
    if torch.cuda.is_available():
        info["sys.gpu"] = torch.cuda.get_device_name(0)
        info["sys.gpu_count"] = str(torch.cuda.device_count())
    return info


def flatten(prefix: str, value: Any) -> dict[str, str]:
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for k, v in value.items():
            out.update(flatten(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: str(value)}


class Tracker:
    """One MLflow run. ``run_id`` given = continue that run (a resumed training)."""

    def __init__(self, settings: Settings, *, experiment: str, run_name: str, run_id: str | None = None) -> None:
        import mlflow

        self._mlflow = mlflow
        self._settings = settings
        self.client = client(settings)
        try:
            mlflow.set_experiment(experiment)
            self.run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name)
        except Exception as exc:  # mlflow raises MlflowException / requests errors
            raise ServiceError(f"cannot reach MLflow at {settings.tracking_uri}: {exc}", hint="start it with `lakeloop up` or set LAKELOOP_MLFLOW_TRACKING_URI") from exc
        self.run_id: str = self.run.info.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        existing = self.client.get_run(self.run_id).data.params
        fresh = {k: v for k, v in flatten("", params).items() if k not in existing}
        if fresh:
            from infra.secrets import redact, secret_values

            secrets = secret_values(self._settings)  # nothing should carry one; if it does, the param loses it
            self._mlflow.log_params({k: redact(v, secrets)[:6000] for k, v in fresh.items()})

    def log_metrics(self, metrics: dict[str, float], *, step: int | None = None) -> None:
        self._mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_dict(self, data: dict[str, Any], path: str) -> None:
        self._mlflow.log_dict(data, path)

    def log_text(self, text: str, path: str) -> None:
        self._mlflow.log_text(text, path)

    def log_artifacts(self, local_dir: str, path: str) -> None:
        """A folder as artifacts of the run under ``path`` (the candidates that lost the selection)."""
        with reachable(self._settings, f"logging artifacts of run {self.run_id}"):
            self._mlflow.log_artifacts(local_dir, path)

    def log_delta_input(self, *, uri: str, version: int, name: str, digest: str, context: str) -> None:
        """An MLflow dataset input that points at a Delta table version (no data copied)."""
        from mlflow.data.delta_dataset_source import DeltaDatasetSource
        from mlflow.data.meta_dataset import MetaDataset

        # the name carries the version too: MLflow drops delta_table_version 0 from the source JSON
        ds = MetaDataset(DeltaDatasetSource(path=uri, delta_table_version=version), name=f"{name}@v{version}", digest=digest[:36])
        self._mlflow.log_input(ds, context=context, tags={"lakeloop.delta_uri": uri, "lakeloop.delta_version": str(version)})

    def log_model(self, code_file: str, *, artifacts: dict[str, str], code_paths: list[str], pip_requirements: list[str],
                  input_example: Any, output_example: Any) -> str:
        """Log the pyfunc as models-from-code (``code_file`` calls ``mlflow.models.set_model``; nothing is pickled) with
        signature and input example; returns its model URI."""
        from mlflow.models import infer_signature

        with reachable(self._settings, f"logging the model of run {self.run_id}"):
            info = self._mlflow.pyfunc.log_model(
                name="model",
                python_model=code_file,
                artifacts=artifacts,
                code_paths=code_paths,
                signature=infer_signature(input_example, output_example),
                input_example=input_example,
                pip_requirements=pip_requirements,
            )
            self.set_tags({"lakeloop.model_uri": info.model_uri})
        return str(info.model_uri)

    def finish(self, status: str = "FINISHED") -> None:
        self._mlflow.end_run(status=status)


@needs_mlflow("reading a run's tags")
def run_tags(settings: Settings, run_id: str) -> dict[str, str]:
    return dict(client(settings).get_run(run_id).data.tags)


CONFIG_ARTIFACT = "config/train_config.json"  # the TrainConfig of a training run, logged by trainers.train._start_tracker


def train_config(c: Any, run_id: str) -> dict[str, Any] | None:
    """The TrainConfig a run trained with, as logged (``CONFIG_ARTIFACT``), read through MLflow client ``c``; None for a
    run that is not a lakeloop training, or a resumed one that logged params only."""
    import json
    import tempfile

    folder = CONFIG_ARTIFACT.rsplit("/", 1)[0]
    if CONFIG_ARTIFACT not in {a.path for a in c.list_artifacts(run_id, folder)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return dict(json.loads(Path(c.download_artifacts(run_id, CONFIG_ARTIFACT, tmp)).read_text()))


@needs_mlflow("logging a run's metrics")
def log_run_metrics(settings: Settings, run_id: str, metrics: dict[str, float], *, step: int = 0) -> None:
    """Add metrics to a finished run (evaluation happens after training)."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    c = client(settings)
    items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
    for i in range(0, len(items), 500):
        c.log_batch(run_id, metrics=items[i : i + 500])


@needs_mlflow("tagging a run")
def set_run_tags(settings: Settings, run_id: str, tags: dict[str, Any]) -> None:
    c = client(settings)
    for k, v in tags.items():
        c.set_tag(run_id, k, str(v))


@needs_mlflow("logging a run's text artifact")
def log_run_text(settings: Settings, run_id: str, text: str, path: str) -> None:
    client(settings).log_text(run_id, text, path)


@needs_mlflow("logging a picture")
def log_run_png(settings: Settings, run_id: str, png: bytes, path: str) -> str | None:
    """Add a PNG to a run's artifacts at ``path`` (a finished run too: pictures come after the numbers); returns the
    http URL the MLflow server hands it out at (``infra.links.mlflow_artifact_file``: what a markdown image in Dagster
    metadata or a model version's description points at), None when MLflow has no http address."""
    import tempfile
    from pathlib import PurePosixPath

    from infra import links

    where = PurePosixPath(path)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / where.name
        local.write_bytes(png)
        client(settings).log_artifact(run_id, str(local), None if str(where.parent) == "." else str(where.parent))
    return links.mlflow_artifact_file(settings, run_id=run_id, path=path)


@needs_mlflow("reading a run's text artifact")
def run_text(settings: Settings, run_id: str, path: str) -> str | None:
    """A text artifact of a run, or None when the run has none at ``path``."""
    import tempfile
    from pathlib import PurePosixPath

    c = client(settings)
    parent = str(PurePosixPath(path).parent)
    if path not in {a.path for a in c.list_artifacts(run_id, None if parent == "." else parent)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return Path(c.download_artifacts(run_id, path, tmp)).read_text()
