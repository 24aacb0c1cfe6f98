"""An S3-compatible server for the object-storage tests: moto's server mode in a child process on a loopback port.

    python -m tests.moto_s3 --port 23456

moto answers a conditional put (``If-None-Match: *``) by looking the key up and then writing it, with no lock between
the two across its request threads, so two racing puts of one key could both succeed -- unlike S3, which decides a
conditional write atomically (one of them gets 412). This server therefore handles one request at a time (a lock
around moto's WSGI app), which makes moto's check-and-write atomic the way S3's is. Nothing else is changed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.ports import free_port

ACCESS_KEY, SECRET_KEY, REGION = "lakeloop-test-key", "lakeloop-test-secret", "us-east-1"


class _OneAtATime:
    """A WSGI app that serves one request at a time (body read and response built under one lock)."""

    def __init__(self, app: Any) -> None:
        self.app, self.lock = app, threading.Lock()

    def __call__(self, environ: dict, start_response: Any) -> Any:
        with self.lock:
            return list(self.app(environ, start_response))


def serve(host: str, port: int) -> None:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    app = _OneAtATime(DomainDispatcherApplication(create_backend_app))
    make_server(host, port, app, threaded=True, request_handler=MotoRequestHandler).serve_forever()


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY)

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


@contextmanager
def moto_s3(host: str = "127.0.0.1") -> Iterator[S3Server]:
    """A running server (child process) until the block ends."""
    import requests

    port = free_port(host)
    root = Path(__file__).resolve().parents[1]  # ``tests.moto_s3`` is importable from the repository root
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "tests.moto_s3", "--host", host, "--port", str(port)], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"{endpoint}/moto-api/", timeout=1)
                break
            except requests.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start on {endpoint} (exit {proc.poll()})") from None
                time.sleep(0.1)
        yield S3Server(endpoint)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    serve(args.host, args.port)
