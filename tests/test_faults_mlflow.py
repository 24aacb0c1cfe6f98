"""Faults of the MLflow server while a trained model is registered, against a real server of this module's own
(on fresh ports: the tests kill it).

- MLflow down: `lakeloop register-model` fails within seconds with one line naming the server and the fix (not
  MLflow's 4-minute retry loop, not a traceback); once it is back, the retry registers exactly one version.
- The server makes the version but its answer is lost (it died mid-reply, a proxy dropped it): MLflow's client
  would resend the create and the registry would hold two versions of one run; lakeloop keeps one.

The "trained model" is a run with a model folder and the tags training leaves (registration does not load it).
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from infra import services
from infra.settings import Settings
from tests.conftest import REPO_ROOT, Platform
from trainers import registry as R
from trainers.candidate import register_candidate
from trainers.tracking import client

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def own_mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    p = Platform(tmp_path_factory.mktemp("faults-mlflow"))
    p.ensure("mlflow")
    try:
        yield p
    finally:
        p.stop()


def _trained_run(settings: Settings) -> str:
    """An MLflow run as training leaves it: a logged model folder, its URI, and the gate's verdict."""
    c = client(settings)
    exp = c.get_experiment_by_name("faults")
    exp_id = exp.experiment_id if exp else c.create_experiment("faults")
    run_id = c.create_run(exp_id, run_name="tiny").info.run_id
    c.log_text(run_id, json.dumps({"flavors": {}}), "model/MLmodel")
    c.set_tag(run_id, "lakeloop.model_uri", f"runs:/{run_id}/model")
    c.set_tag(run_id, "lakeloop.train_examples.version", "0")
    c.set_tag(run_id, "lakeloop.gate", "passed")
    c.set_terminated(run_id)
    return run_id


def _versions(settings: Settings, run_id: str) -> list[str]:
    found = client(settings).search_model_versions(f"name='{settings.registered_model_name}' and run_id='{run_id}'")
    return sorted(str(v.version) for v in found)


def _kill_mlflow(settings: Settings) -> None:
    pid = json.loads((settings.run_dir / "mlflow.pid").read_text())["pid"]
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while services.port_in_use(settings.bind_host, settings.mlflow_port):
        assert time.monotonic() < deadline, "MLflow still listens 30 s after SIGKILL"
        time.sleep(0.2)


def _cli_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAKELOOP_", "MLFLOW_"))}
    return {**env, **settings.env()}


def test_register_with_mlflow_down_fails_fast_naming_the_server_then_registers_once(own_mlflow: Platform, tmp_path: Path) -> None:
    s = own_mlflow.settings.model_copy(update={"registered_model_name": f"faults-{uuid.uuid4().hex[:8]}",
                                               "lake_root": str(tmp_path / "lake")})
    run_id = _trained_run(s)
    _kill_mlflow(s)
    started = time.monotonic()
    try:
        out = subprocess.run([sys.executable, "-m", "orchestration.cli", "register-model", run_id], env=_cli_env(s),
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("`lakeloop register-model` was still retrying 120 s after MLflow went down")
    took = time.monotonic() - started
    print(f"register-model with MLflow down: rc {out.returncode} after {took:.1f}s\n{out.stderr[-600:]}")
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"MLflow at {s.tracking_uri} is not reachable" in out.stderr
    assert "fix:" in out.stderr and "lakeloop up" in out.stderr and "LAKELOOP_MLFLOW_TRACKING_URI" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert took < 60, f"took {took:.0f}s to give up"

    services.up(s, log=print, only=["mlflow"])  # back, on its own store
    version, created, change = register_candidate(s, run_id, actor="test", metrics={})
    assert created and change is not None and change.to_version == version
    again = register_candidate(s, run_id, actor="test-retry", metrics={})
    assert again == (version, False, None)
    assert _versions(s, run_id) == [version]
    assert R.get_alias_version(s, "challenger") == version


class _LoseOneAnswer(http.server.BaseHTTPRequestHandler):
    """Forwards to MLflow; the first request whose path starts with ``server.lose`` reaches MLflow and is carried
    out there, but its answer is dropped (the connection closes), as when the server dies while replying."""

    protocol_version = "HTTP/1.1"

    def _forward(self) -> None:
        srv = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")}
        r = requests.request(self.command, srv.upstream + self.path, data=body, headers=headers, timeout=60)  # type: ignore[attr-defined]
        if self.path.startswith(srv.lose) and not srv.lost:  # type: ignore[attr-defined]
            srv.lost.append(self.path)  # type: ignore[attr-defined]
            self.close_connection = True
            return
        self.send_response(r.status_code)
        for k, v in r.headers.items():
            if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(r.content)))
        self.end_headers()
        self.wfile.write(r.content)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _forward

    def log_message(self, *args: object) -> None:
        pass


def test_a_create_whose_answer_is_lost_leaves_one_version(own_mlflow: Platform) -> None:
    s = own_mlflow.ensure("mlflow")
    if not services.http_ok(f"{s.tracking_uri}/health"):  # the other test of this module killed it
        services.up(s, log=print, only=["mlflow"])
    s = s.model_copy(update={"registered_model_name": f"faults-{uuid.uuid4().hex[:8]}"})
    run_id = _trained_run(s)
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _LoseOneAnswer)
    proxy.upstream, proxy.lose, proxy.lost = s.tracking_uri, "/api/2.0/mlflow/model-versions/create", []  # type: ignore[attr-defined]
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        via = s.model_copy(update={"mlflow_tracking_uri": f"http://127.0.0.1:{proxy.server_address[1]}"})
        version, created = R.register_version(via, run_id=run_id, model_uri=f"runs:/{run_id}/model", tags={"lakeloop.gate": "passed"})
        assert proxy.lost, "the proxy never saw the create"  # type: ignore[attr-defined]
        assert created
        assert _versions(s, run_id) == [version], "a create whose answer was lost was sent again: two versions of one run"
        assert R.register_version(via, run_id=run_id, model_uri=f"runs:/{run_id}/model", tags={}) == (version, False)
    finally:
        proxy.shutdown()
        proxy.server_close()
