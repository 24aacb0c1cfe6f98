"""Issue 18, safe to deploy: nothing listens beyond loopback without credentials.

Unit tests of the refusal (``infra.surfaces``: one ConfigError that lists every missing setting and its fix), and one
test per surface bound to 127.0.0.2: lakeloop's loopback is 127.0.0.1, ::1 and localhost only, so 127.0.0.2 takes the
beyond-loopback path (credentials required) while staying on this machine. Each refuses an unauthenticated request and
accepts an authenticated one; Dagster's read-only webserver refuses a launch that the loopback one accepts.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from infra import services
from infra.api_keys import key_entry, new_key
from infra.errors import ConfigError
from infra.ports import free_port
from infra.settings import Settings, load_settings
from infra.surfaces import problems, require_credentials
from tests.test_feedback_corpus import valid_event

OUTSIDE = "127.0.0.2"  # beyond lakeloop's loopback, still this machine


def _configured(tmp_path: Path, **extra: Any) -> Settings:
    """Settings beyond loopback with every credential `up` needs."""
    secret = tmp_path / "admin-password"
    secret.write_text("admin-Secret-1\n")
    return load_settings(home=tmp_path / "home", bind_host=OUTSIDE, kafka_host="127.0.0.1",
                         mlflow_admin_password_file=secret, mlflow_password="lakeloop-Secret-2",
                         collector_api_keys=key_entry("k"), autopilot=False, **extra)


# ---- the refusal ---------------------------------------------------------------------------------------------
def test_loopback_needs_no_credentials(tmp_path: Path) -> None:
    s = load_settings(home=tmp_path / "home")
    assert problems(s, ("kafka", "mlflow", "dagster", "collector", "serve")) == []
    assert not s.mlflow_auth_on and not s.dagster_read_only


def test_up_lists_every_missing_setting_with_its_fix(tmp_path: Path) -> None:
    s = load_settings(home=tmp_path / "home", bind_host="0.0.0.0", autopilot=False)
    with pytest.raises(ConfigError) as exc:
        require_credentials(s)
    text = str(exc.value)
    assert text.startswith("4 settings missing for surfaces beyond loopback, nothing started:\n  - kafka: ")
    for fix in ("set LAKELOOP_KAFKA_HOST=127.0.0.1", "set LAKELOOP_MLFLOW_ADMIN_PASSWORD_FILE=",
                "set LAKELOOP_MLFLOW_PASSWORD=", "set LAKELOOP_COLLECTOR_API_KEYS to the printed sha256:... entry"):
        assert fix in text, fix
    assert "serve" not in [p.surface for p in problems(s)]  # `lakeloop serve` checks its own surface


def test_up_refuses_before_starting_anything(tmp_path: Path) -> None:
    s = load_settings(home=tmp_path / "home", bind_host="0.0.0.0", autopilot=False)
    with pytest.raises(ConfigError):
        services.up(s, log=lambda _: None)
    assert not s.run_dir.exists() and not s.logs_dir.exists()


def test_configured_beyond_loopback_passes_and_keeps_passwords_out_of_messages(tmp_path: Path) -> None:
    s = _configured(tmp_path)
    require_credentials(s)
    assert s.mlflow_auth_on and s.dagster_read_only
    assert "lakeloop-Secret-2" not in repr(s)
    assert s.env()["LAKELOOP_MLFLOW_PASSWORD"] == "lakeloop-Secret-2"  # child processes get the value, not ****
    assert s.mlflow_client_env() == {"MLFLOW_TRACKING_USERNAME": "lakeloop", "MLFLOW_TRACKING_PASSWORD": "lakeloop-Secret-2"}
    assert s.mlflow_admin_secret() == "admin-Secret-1"
    from infra.secrets import redact, secret_values

    assert redact("admin-Secret-1 lakeloop-Secret-2", secret_values(s)) == "[redacted] [redacted]"


@pytest.mark.parametrize(("change", "surface", "expected"), [
    ({"mlflow_auth": False}, "mlflow", "set LAKELOOP_MLFLOW_AUTH=on"),
    ({"mlflow_admin_password_file": Path("/nonexistent/pw")}, "mlflow", "cannot read /nonexistent/pw"),
    ({"kafka_host": None}, "kafka", "LAKELOOP_KAFKA_HOST=127.0.0.1"),
    ({"collector_api_keys": "sha256:nothex"}, "collector", "LAKELOOP_COLLECTOR_API_KEYS: entry 1 of 1"),
    ({"dagster_local_port": "the webserver's own"}, "dagster", "set LAKELOOP_DAGSTER_LOCAL_PORT"),
])
def test_one_missing_setting_is_named(tmp_path: Path, change: dict[str, Any], surface: str, expected: str) -> None:
    s = _configured(tmp_path)
    if change.get("dagster_local_port") == "the webserver's own":  # whatever LAKELOOP_DAGSTER_PORT says in this process
        change = {"dagster_local_port": s.dagster_port}
    s = s.model_copy(update=change)
    found = problems(s)
    assert [p.surface for p in found] == [surface]
    with pytest.raises(ConfigError, match="beyond loopback|cannot read|entry 1|share port") as exc:
        require_credentials(s)
    assert expected in str(exc.value)


def test_mlflow_auth_is_opt_in_on_loopback(tmp_path: Path) -> None:
    s = load_settings(home=tmp_path / "home", mlflow_auth=True)
    assert [p.message.split(",")[0] for p in problems(s)] == ["MLflow on 127.0.0.1 runs its basic-auth app"] * 2
    spec = services._mlflow_spec(s.model_copy(update={"mlflow_admin_password": "a", "mlflow_password": "b"}))
    assert spec.command[-2:] == ["--app-name", "basic-auth"] and spec.ready is not None


def test_serve_refuses_beyond_loopback_without_keys(tmp_path: Path) -> None:
    s = load_settings(home=tmp_path / "home")
    assert problems(s, ("serve",), serve_host=OUTSIDE)[0].fix.startswith(
        "create a key with `lakeloop collector new-key [--app-id APP]` and set LAKELOOP_SERVE_API_KEYS")
    assert problems(s.model_copy(update={"serve_api_keys": key_entry("k")}), ("serve",), serve_host=OUTSIDE) == []


@pytest.mark.slow  # imports mlflow (~10 s on a busy machine)
def test_mlflow_keeps_its_default_allowed_hosts_and_adds_the_bind_address(tmp_path: Path) -> None:
    from mlflow.server.security_utils import get_default_allowed_hosts

    assert list(services.MLFLOW_DEFAULT_ALLOWED_HOSTS) == get_default_allowed_hosts()
    hosts = services._mlflow_allowed_hosts(_configured(tmp_path))[1].split(",")
    assert hosts == get_default_allowed_hosts() + [OUTSIDE, f"{OUTSIDE}:*"]
    assert services._mlflow_allowed_hosts(load_settings(home=tmp_path)) == []


def test_dagster_beyond_loopback_is_read_only_beside_a_writable_loopback_one(tmp_path: Path) -> None:
    s = _configured(tmp_path, dagster_port=3000, dagster_local_port=3001)
    web, local, daemon = services.service_specs(s, ["dagster-webserver", "dagster-webserver-local", "dagster-daemon"])
    assert (web.host, "--read-only" in web.command) == (OUTSIDE, True)
    assert (local.host, local.port, "--read-only" in local.command) == ("127.0.0.1", 3001, False)
    assert s.dagster_url == "http://127.0.0.1:3001"  # lakeloop's own clients launch runs there


# ---- each surface, bound beyond loopback -------------------------------------------------------------------------
def _wait(url: str, timeout: float = 120.0, **kw: Any) -> requests.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return requests.get(url, timeout=2, **kw)
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@pytest.mark.integration
@pytest.mark.slow
def test_mlflow_beyond_loopback_needs_a_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = _configured(tmp_path, mlflow_port=free_port(), serve_mlflow_password="serve-Secret-3")
    logs: list[str] = []
    try:
        services.up(s, log=logs.append, only=["mlflow"])
        assert "mlflow: user 'lakeloop' created (admin), user 'lakeloop-serve' created (READ)" in logs
        base = f"http://{OUTSIDE}:{s.mlflow_port}"
        assert requests.get(f"{base}/health", timeout=5).status_code == 200  # the health check needs no password
        search = f"{base}/api/2.0/mlflow/experiments/search?max_results=1"
        assert requests.get(search, timeout=5).status_code == 401
        assert requests.get(search, auth=("lakeloop", "wrong"), timeout=5).status_code == 401
        assert requests.get(search, auth=("lakeloop", "lakeloop-Secret-2"), timeout=5).status_code == 200
        serve_user = ("lakeloop-serve", "serve-Secret-3")  # reads what lakeloop's user made, never changes it
        assert requests.get(search, auth=serve_user, timeout=5).status_code == 200
        api = f"{base}/api/2.0/mlflow"
        made = requests.post(f"{api}/experiments/create", json={"name": "e"}, auth=("lakeloop", "lakeloop-Secret-2"),
                             timeout=5).json()["experiment_id"]
        delete = {"experiment_id": made}
        assert requests.post(f"{api}/experiments/delete", json=delete, auth=serve_user, timeout=5).status_code == 403
        assert not any("Secret" in line for line in logs)
        # lakeloop's own MLflow clients: the user from the settings, through MLFLOW_TRACKING_USERNAME/PASSWORD
        from trainers.tracking import client

        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
        assert client(s).create_experiment("surfaces-test")
        assert "Secret" not in (s.logs_dir / "mlflow.log").read_text()
        services.up(s, log=logs.append, only=["mlflow"])  # idempotent: already running, users untouched
    finally:
        services.down(s, log=lambda _: None, only=["mlflow"])


TINY_JOB = '''
import dagster as dg

@dg.op
def noop() -> int:
    return 1

@dg.job
def noop_job() -> None:
    noop()

defs = dg.Definitions(jobs=[noop_job])
'''

LAUNCH_RUN = """
mutation { launchRun(executionParams: {selector: {repositoryLocationName: "tiny", repositoryName: "__repository__",
  jobName: "noop_job"}}) { __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }
"""


@pytest.mark.integration
@pytest.mark.slow
def test_dagster_beyond_loopback_refuses_launches_the_loopback_one_takes(tmp_path: Path) -> None:
    s = _configured(tmp_path, dagster_port=free_port(), dagster_local_port=free_port())
    web, local = services.service_specs(s, ["dagster-webserver", "dagster-webserver-local"])
    web.prepare()  # DAGSTER_HOME and its instance, as `up` makes them; then a one-op job instead of lakeloop's code
    job = tmp_path / "tiny.py"
    job.write_text(TINY_JOB)
    (s.dagster_home / "workspace.yaml").write_text(
        f"load_from:\n  - python_file:\n      relative_path: {job}\n      location_name: tiny\n")
    try:
        for spec in (web, local):
            services._start(s, dataclasses.replace(spec, prepare=None), lambda _: None)
        read_only, writable = f"http://{OUTSIDE}:{s.dagster_port}/graphql", f"{s.dagster_url}/graphql"
        deadline = time.monotonic() + 150
        while not (services.dagster_graphql_ok(read_only[:-8]) and services.dagster_graphql_ok(writable[:-8])):
            assert time.monotonic() < deadline, "the webservers did not answer"
            time.sleep(0.5)
        refused = requests.post(read_only, json={"query": LAUNCH_RUN}, timeout=30).json()
        assert refused["data"]["launchRun"]["__typename"] == "UnauthorizedError"
        # the cross-site forms of the same mutation: GET, and a POST that is not JSON (no CORS preflight)
        by_get = requests.get(read_only, params={"query": LAUNCH_RUN}, timeout=30).json()
        by_form = requests.post(read_only, params={"query": LAUNCH_RUN}, data="x", timeout=30,
                                headers={"Content-Type": "text/plain"}).json()
        assert by_get["data"]["launchRun"]["__typename"] == by_form["data"]["launchRun"]["__typename"] == "UnauthorizedError"
        taken = requests.post(writable, json={"query": LAUNCH_RUN}, timeout=30).json()
        assert taken["data"]["launchRun"]["__typename"] == "LaunchRunSuccess", taken
        # what makes a writable webserver unfit to face browsers beyond loopback (docs/deploy/dagster-proxy.md):
        # Dagster 1.13 runs a mutation sent by GET, which any page can make a browser send
        by_get = requests.get(writable, params={"query": LAUNCH_RUN}, timeout=30).json()
        assert by_get["data"]["launchRun"]["__typename"] == "LaunchRunSuccess", by_get
    finally:
        services.down(s, log=lambda _: None, only=["dagster-webserver", "dagster-webserver-local"])


class _Server:
    """A uvicorn server in a thread, on ``host``:``port``."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://{host}:{port}"

    def __enter__(self) -> _Server:
        self.thread.start()
        _wait(f"{self.url}/healthz", timeout=30)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class _Model:
    def predict(self, frame: Any) -> list[float]:
        return [0.5] * len(frame)


@pytest.fixture()
def serve_keys() -> Iterator[tuple[str, str]]:
    yield new_key(), new_key()


@pytest.mark.integration
@pytest.mark.slow
def test_scoring_service_beyond_loopback_needs_a_key_scoped_to_the_app(tmp_path: Path, serve_keys: tuple[str, str]) -> None:
    from monitors import serve

    any_app, only_qa = serve_keys
    s = load_settings(home=tmp_path / "home", serve_host=OUTSIDE, mlflow_tracking_uri="http://127.0.0.1:9",
                      serve_api_keys=f"{key_entry(any_app)},{key_entry(only_qa, 'qa')}")
    require_credentials(s, ("serve",))
    app = serve.create_app(s, publisher=None, poll_seconds=3600)
    with _Server(app, OUTSIDE, free_port()) as srv:
        app.state.pool.serving = serve.Serving(champion=serve.Loaded("1", _Model()))
        body = {"prompt": "p", "response": "r", "conversation_id": "c", "app_id": "qa"}
        refused = requests.post(f"{srv.url}/score", json=body, timeout=10)
        assert refused.status_code == 401 and refused.json()["hint"] == "send `Authorization: Bearer <key>`"
        assert requests.post(f"{srv.url}/score", json={"bad": 1}, timeout=10).status_code == 401  # 401 before 422
        assert requests.get(f"{srv.url}/stats", timeout=10).status_code == 401
        ok = requests.post(f"{srv.url}/score", json=body, headers={"Authorization": f"Bearer {only_qa}"}, timeout=10)
        assert ok.status_code == 200 and ok.json()["score"] == 0.5
        other = requests.post(f"{srv.url}/score", json={**body, "app_id": "other"},
                              headers={"Authorization": f"Bearer {only_qa}"}, timeout=10)
        assert other.status_code == 403 and "'other'" in other.json()["error"]
        assert requests.post(f"{srv.url}/score", json={**body, "app_id": "other"},
                             headers={"Authorization": f"Bearer {any_app}"}, timeout=10).status_code == 200
        assert requests.get(f"{srv.url}/readyz", timeout=10).status_code == 200  # health checks stay open


@pytest.mark.integration
@pytest.mark.slow
def test_collector_beyond_loopback_needs_a_key(tmp_path: Path) -> None:
    from feedback.collector import app as collector
    class Accepting:  # an EventPublisher: Kafka's part is the collector's own tests'; here only the door matters
        def start(self) -> None: ...
        def close(self) -> None: ...
        def unready(self) -> str | None: return None
        async def publish(self, events: list[Any]) -> list[str | None]: return [None] * len(events)

    key = new_key()
    with pytest.raises(ConfigError, match="beyond loopback"):
        collector.create_app(load_settings(home=tmp_path / "home", collector_host=OUTSIDE), publisher=Accepting())
    s = load_settings(home=tmp_path / "home", collector_host=OUTSIDE, collector_api_keys=key_entry(key))
    event = valid_event()
    with _Server(collector.create_app(s, publisher=Accepting()), OUTSIDE, free_port()) as srv:
        assert requests.post(f"{srv.url}/v1/feedback", json=event, timeout=10).status_code == 401
        ok = requests.post(f"{srv.url}/v1/feedback", json=event, headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert ok.status_code == 202, ok.text
