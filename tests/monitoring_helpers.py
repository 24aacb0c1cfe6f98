"""Shared helpers of the monitoring tests and bench: a local HTTP alert receiver, tiny real pyfunc models,
synthetic traffic with a known satisfaction signal, and the scoring service on a background thread."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import numpy as np
import pandas as pd

# ---- an incoming-webhook receiver on loopback --------------------------------------------------------


class Receiver:
    """Collects JSON bodies POSTed to http://127.0.0.1:<port>/<path>; a subclass answers otherwise (``answer``)."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                status, reply = outer.answer(self.path, json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0)))))
                self.send_response(status)
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        self.received.append((path, body))
        return 200, b"ok"

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---- synthetic traffic with a satisfaction signal ------------------------------------------------------

GOOD = ["precise", "sourced", "clear", "correct", "helpful", "complete", "concise", "accurate"]
BAD = ["wrong", "vague", "unsourced", "rambling", "incorrect", "evasive", "confused", "off-topic"]
TOPICS = ["tax", "rivers", "python", "opera", "tennis", "volcano", "bread", "satellites", "chess", "insurance"]


def make_pairs(n: int, *, seed: int, long_prompts: bool = False) -> pd.DataFrame:
    """(prompt, response, satisfied) where satisfied responses use GOOD words (with noise)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        topic = rng.choice(TOPICS)
        satisfied = bool(rng.random() < 0.6)
        vocab = GOOD if satisfied else BAD
        words = list(rng.choice(vocab, size=3)) + list(rng.choice(GOOD + BAD, size=1))
        k = int(rng.integers(20, 60)) if long_prompts else int(rng.integers(4, 10))
        prompt = f"question about {topic}: " + " ".join(rng.choice(TOPICS + ["why", "how", "what", "when"], size=k))
        response = f"answer on {topic} " + " ".join(words)
        rows.append((prompt, response, float(satisfied)))
    return pd.DataFrame(rows, columns=["prompt", "response", "satisfied"])


# ---- tiny real pyfunc models in the real registry ---------------------------------------------------

try:
    import mlflow.pyfunc

    class SklearnScorer(mlflow.pyfunc.PythonModel):
        """TF-IDF + logistic regression on "prompt response"; predict -> DataFrame[score]."""

        def __init__(self, pipeline: Any) -> None:
            self.pipeline = pipeline

        def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
            text = model_input["prompt"].astype(str) + " " + model_input["response"].astype(str)
            return pd.DataFrame({"score": self.pipeline.predict_proba(text)[:, 1]})
except ImportError:  # pragma: no cover
    pass


def train_scorer(data: pd.DataFrame, *, flip: bool = False) -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    y = data["satisfied"].astype(int).to_numpy()
    if flip:
        y = 1 - y
    pipe = make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=200))
    pipe.fit(data["prompt"] + " " + data["response"], y)
    return SklearnScorer(pipe)


def register(settings: Any, model: Any) -> str:
    """Log and register a pyfunc under settings.registered_model_name; returns the version."""
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    mlflow.set_experiment("lakeloop-monitoring-tests")
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model", python_model=model, registered_model_name=settings.registered_model_name,
            pip_requirements=["scikit-learn", "pandas"],
        )
    version = str(info.registered_model_version)
    from trainers.registry import record_registration

    # the services load a version only if the promotion ledger vouches for its files (trainers.model_trust); these
    # test models are pickled pyfuncs, which lakeloop's own registration refuses, hence allow_pickle
    record_registration(settings, version, actor="tests", reason="monitoring test model", gate="override", allow_pickle=True)
    return version


# ---- the scoring service on a background thread ----------------------------------------------------


class ServiceThread:
    def __init__(self, app: Any, port: int) -> None:
        import uvicorn

        self.port = port
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServiceThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("scoring service did not start in 30 s")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


# ---- driving the service like users would -------------------------------------------------------


def wait_for(url: str, pred, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        body = httpx.get(f"{url}/readyz", timeout=5).json()
        if pred(body):
            return body
        time.sleep(0.2)
    raise AssertionError(f"service did not reach the expected state: {body}")


def drive_window(s: Any, url: str, *, seed: int, n: int = 300) -> list[dict]:
    """n real requests; every simulated user then gives a thumb matching their real satisfaction (5% noise).
    The thumbs are whole v1 events (``feedback.events``), as the ingestor and the Kafka windows accept them."""
    from kafka import KafkaProducer

    from feedback.events import validate_event

    traffic = make_pairs(n, seed=seed)
    out = []
    with httpx.Client(timeout=10) as client:
        for i, row in traffic.iterrows():
            r = client.post(f"{url}/score", json={"prompt": row.prompt, "response": row.response, "conversation_id": f"c{seed}-{i}"})
            assert r.status_code == 200, r.text
            out.append({**r.json(), "satisfied": row.satisfied, "prompt": row.prompt, "response": row.response,
                        "conversation_id": f"c{seed}-{i}"})
    producer = KafkaProducer(bootstrap_servers=s.bootstrap_servers)
    noise = pd.Series(range(n)).apply(lambda i: (i * 7919 + seed) % 20 == 0)
    for res, flip in zip(out, noise, strict=True):
        happy = bool(res["satisfied"]) != bool(flip)
        event = {"event_id": uuid.uuid4().hex, "event_type": "thumbs", "value": 1 if happy else -1,
                 "occurred_at": datetime.now(timezone.utc).isoformat(), "app_id": "monitoring-tests",
                 "user_id": f"user-{res['conversation_id']}", "conversation_id": res["conversation_id"],
                 "response_id": res["response_id"], "model_name": s.registered_model_name,
                 "model_version": res["model_version"], "prompt": res["prompt"], "response": res["response"]}
        verdict = validate_event(event)
        assert type(verdict).__name__ == "Valid", verdict
        producer.send(s.feedback_topic, json.dumps(event).encode(), key=res["conversation_id"].encode())
    producer.flush()
    producer.close()
    return out
