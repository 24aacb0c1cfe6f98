"""Every network surface of lakeloop and the credentials it needs beyond loopback, checked before anything starts.

Loopback is 127.0.0.1, ::1 and localhost (``infra.api_keys.is_loopback``). Beyond it:

- Kafka: the local broker is PLAINTEXT without credentials, so refused (apps send feedback through the collector);
  LAKELOOP_KAFKA_HOST keeps it on loopback.
- MLflow: the basic-auth app, with an admin password and the password of lakeloop's own user.
- Dagster: the webserver there is read-only (no credentials to check); a writable one stays on 127.0.0.1.
- the collector and the scoring service: API key hashes (``infra.api_keys``).

``problems`` lists what is missing for a set of surfaces, ``require_credentials`` raises one ConfigError listing all of
them with the fix, before ``lakeloop up`` (or ``lakeloop serve``) starts anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from infra.api_keys import is_loopback, missing_keys, parse_keys
from infra.errors import ConfigError
from infra.settings import Settings

Surface = Literal["kafka", "mlflow", "dagster", "collector", "serve"]
UP_SURFACES: tuple[Surface, ...] = ("kafka", "mlflow", "dagster", "collector")  # what `lakeloop up` starts


@dataclass(frozen=True)
class Problem:
    surface: Surface
    message: str  # what is wrong
    fix: str  # how to fix it


def _mlflow_problems(s: Settings) -> list[Problem]:
    where = f"MLflow on {s.bind_host}"
    if not s.mlflow_auth_on:
        if is_loopback(s.bind_host):
            return []
        return [Problem("mlflow", f"{where} is beyond loopback with LAKELOOP_MLFLOW_AUTH=off: anyone who reaches it could "
                        "read and change models", "set LAKELOOP_MLFLOW_AUTH=on (or unset it), or LAKELOOP_BIND_HOST=127.0.0.1")]
    out = []
    try:
        admin = s.mlflow_admin_secret()
    except ConfigError as exc:
        out.append(Problem("mlflow", exc.message, exc.hint or ""))
    else:
        if admin is None:
            out.append(Problem("mlflow", f"{where} runs its basic-auth app, which needs the admin's password",
                               "set LAKELOOP_MLFLOW_ADMIN_PASSWORD_FILE=<file holding the password> "
                               "(or LAKELOOP_MLFLOW_ADMIN_PASSWORD)"))
    if not s.mlflow_client_env():
        out.append(Problem("mlflow", f"{where} runs its basic-auth app, and lakeloop's own user "
                           f"{s.mlflow_username!r} has no password",
                           "set LAKELOOP_MLFLOW_PASSWORD=<a new password> (`lakeloop up` creates the user "
                           "LAKELOOP_MLFLOW_USERNAME with it)"))
    return out


def _keys_problem(surface: Surface, host: str, text: str, *, service: str, does: str, setting: str,
                  host_setting: str) -> list[Problem]:
    try:
        keys = parse_keys(text, setting=setting)
    except ConfigError as exc:
        return [Problem(surface, exc.message, exc.hint or "")]
    error = missing_keys(host, keys, service=service, does=does, setting=setting, host_setting=host_setting)
    return [] if error is None else [Problem(surface, error.message, error.hint or "")]


def problems(s: Settings, surfaces: Iterable[Surface] = UP_SURFACES, *, serve_host: str | None = None) -> list[Problem]:
    """What is missing for ``surfaces`` to listen where the settings say (``serve_host`` overrides serve_host)."""
    out: list[Problem] = []
    for surface in surfaces:
        if surface == "kafka" and not is_loopback(s.kafka_bind_host):
            out.append(Problem("kafka", f"Kafka would listen on {s.kafka_bind_host}, beyond loopback, and the broker "
                               "`lakeloop up` starts is PLAINTEXT, without credentials: anyone who reaches it could read "
                               "and write every topic",
                               "set LAKELOOP_KAFKA_HOST=127.0.0.1 (apps send feedback through the collector; a secured "
                               "cluster goes in LAKELOOP_KAFKA_BOOTSTRAP with the kafka_security_* settings)"))
        elif surface == "mlflow":
            out += _mlflow_problems(s)
        elif surface == "dagster" and s.dagster_read_only and s.dagster_local_port == s.dagster_port:
            out.append(Problem("dagster", f"the writable Dagster webserver (127.0.0.1) and the read-only one ({s.bind_host}) "
                               f"would share port {s.dagster_port}", "set LAKELOOP_DAGSTER_LOCAL_PORT to another port"))
        elif surface == "collector":
            out += _keys_problem("collector", s.collector_bind_host, s.collector_api_keys, service="the collector",
                                 does="write feedback", setting="LAKELOOP_COLLECTOR_API_KEYS",
                                 host_setting="LAKELOOP_COLLECTOR_HOST")
        elif surface == "serve":
            out += _keys_problem("serve", serve_host or s.serve_bind_host, s.serve_api_keys, service="the scoring service",
                                 does="score with your models and write predictions", setting="LAKELOOP_SERVE_API_KEYS",
                                 host_setting="LAKELOOP_SERVE_HOST")
    return out


def require_credentials(s: Settings, surfaces: Iterable[Surface] = UP_SURFACES, *, serve_host: str | None = None) -> None:
    """ConfigError listing every surface that would listen beyond loopback without its credentials, and each fix."""
    found = problems(s, surfaces, serve_host=serve_host)
    if not found:
        return
    if len(found) == 1:
        raise ConfigError(found[0].message, hint=found[0].fix)
    lines = "\n".join(f"  - {p.surface}: {p.message}\n    fix: {p.fix}" for p in found)
    raise ConfigError(f"{len(found)} settings missing for surfaces beyond loopback, nothing started:\n{lines}",
                      hint="set what each line says (docs/DESIGN.md, 'Surfaces and credentials')")
