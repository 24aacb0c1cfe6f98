"""MLflow's basic-auth app (`mlflow server --app-name basic-auth`) for the local tracking server.

The auth app keeps users and permissions in its own SQLite database beside MLflow's (<home>/mlflow/basic_auth.db),
configured by the file MLFLOW_AUTH_CONFIG_PATH names; it needs Flask-WTF (`mlflow[auth]`) and a CSRF secret
(``flask_secret``). It creates the admin at its first start from
MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD (given in the server's environment, never written to the
file or a log). ``/health`` stays unauthenticated, so the health check needs no password.

Once the server answers, ``ensure_users`` creates lakeloop's own user (mlflow_username) with the admin's
credentials, or resets its password to the settings' one, and makes it an admin of MLflow: it creates the experiment
and the registered model, moves aliases and deletes versions (erasure), also on resources made before auth was on,
which per-resource grants would miss. With serve_mlflow_password set it also creates the scoring service's user, not
an admin: READ on what others made, the default permission of everyone else the admin adds (MLflow still lets any
user create experiments and models of its own).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import requests

from infra.errors import ConfigError, ServiceError
from infra.settings import Settings

DEFAULT_PERMISSION = "READ"
_API = "/api/2.0/mlflow/users"


def config_path(settings: Settings) -> Path:
    return settings.mlflow_dir / "basic_auth.ini"


def write_auth_config(settings: Settings) -> Path:
    """The auth app's config file (no password in it)."""
    path = config_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([
        "[mlflow]",
        f"default_permission = {DEFAULT_PERMISSION}",
        f"database_uri = sqlite:///{settings.mlflow_dir / 'basic_auth.db'}",
        f"admin_username = {settings.mlflow_admin_username}",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
        "",
    ]))
    return path


def flask_secret(settings: Settings) -> str:
    """The auth app's CSRF secret (MLFLOW_FLASK_SERVER_SECRET_KEY): made once, kept in <home>/mlflow (mode 0600) so that
    a restart keeps the browser sessions' tokens valid."""
    path = settings.mlflow_dir / "flask_secret_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def server_env(settings: Settings) -> dict[str, str]:
    """The auth app's environment: its config file, its CSRF secret and the admin's credentials (used at its first
    start). Call it when the server starts (it creates the secret)."""
    return {"MLFLOW_AUTH_CONFIG_PATH": str(config_path(settings)),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": flask_secret(settings),
            "MLFLOW_AUTH_ADMIN_USERNAME": settings.mlflow_admin_username,
            "MLFLOW_AUTH_ADMIN_PASSWORD": settings.mlflow_admin_secret() or ""}


def ensure_users(settings: Settings, *, timeout: float = 10.0) -> str:
    """Create lakeloop's MLflow user (or set its password) and make it an admin, and the read-only serve user when it
    has a password; returns what was done."""
    admin = settings.mlflow_admin_secret()
    creds = settings.mlflow_client_env()
    if admin is None or not creds:
        raise ConfigError("MLflow's auth app needs the admin's password and lakeloop's user password",
                          hint="set LAKELOOP_MLFLOW_ADMIN_PASSWORD_FILE and LAKELOOP_MLFLOW_PASSWORD")
    base = settings.tracking_uri.rstrip("/") + _API
    auth = (settings.mlflow_admin_username, admin)
    users = [(creds["MLFLOW_TRACKING_USERNAME"], creds["MLFLOW_TRACKING_PASSWORD"], True)]
    serve = settings.mlflow_client_env(serve=True)
    if serve != creds:
        users.append((serve["MLFLOW_TRACKING_USERNAME"], serve["MLFLOW_TRACKING_PASSWORD"], False))
    done = []
    try:
        for user, password, is_admin in users:
            done.append(f"user {user!r} {_ensure_user(settings, base, auth, user, password, is_admin, timeout)}")
    except requests.RequestException as exc:
        raise ServiceError(f"setting up MLflow users at {settings.tracking_uri} failed: {type(exc).__name__}",
                           hint=f"see {settings.logs_dir / 'mlflow.log'}") from None
    return ", ".join(done)


def _ensure_user(settings: Settings, base: str, auth: tuple[str, str], user: str, password: str, is_admin: bool,
                 timeout: float) -> str:
    got = requests.get(f"{base}/get", params={"username": user}, auth=auth, timeout=timeout)
    if got.status_code == 401:
        raise ConfigError(f"MLflow at {settings.tracking_uri} refused the admin {settings.mlflow_admin_username!r}: "
                          "wrong password (the auth app keeps the admin password of its first start)",
                          hint=f"set LAKELOOP_MLFLOW_ADMIN_PASSWORD_FILE to the admin's current password, or remove "
                               f"{settings.mlflow_dir / 'basic_auth.db'} to start the user store anew")
    if got.status_code == 200:
        done = "password set"
        r = requests.patch(f"{base}/update-password", json={"username": user, "password": password}, auth=auth,
                           timeout=timeout)
    else:
        done = "created"
        r = requests.post(f"{base}/create", json={"username": user, "password": password}, auth=auth, timeout=timeout)
    r.raise_for_status()
    requests.patch(f"{base}/update-admin", json={"username": user, "is_admin": is_admin}, auth=auth,
                   timeout=timeout).raise_for_status()
    return done + (" (admin)" if is_admin else f" ({DEFAULT_PERMISSION})")


def use_credentials(settings: Settings, *, serve: bool = False) -> None:
    """Give this process's MLflow clients lakeloop's user (MLFLOW_TRACKING_USERNAME/PASSWORD, read by MLflow at each
    request), unless the environment names one already; ``serve``: the read-only serve user when it has a password,
    whatever the environment held. Child processes inherit it."""
    env = settings.mlflow_client_env(serve=serve)
    if serve and env != settings.mlflow_client_env():
        os.environ.update(env)
        return
    for key, value in env.items():
        os.environ.setdefault(key, value)
