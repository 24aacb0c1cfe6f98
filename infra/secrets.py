"""The secrets lakeloop holds, and their redaction wherever text leaves a process (logs, alert records, metadata).

A secret is any ``SecretStr`` setting (Kafka SASL password, alert webhook URLs, MLflow and API credentials), plus the
secrets read straight from the environment (``LAKELOOP_PSEUDONYM_KEY``, ``MLFLOW_TRACKING_PASSWORD``,
``MLFLOW_TRACKING_TOKEN``, and the AWS secret key and session token of an s3:// lake). ``SecretStr`` already keeps them out of ``repr``, ``model_dump`` and JSON dumps of the
settings; ``redact`` takes them out of free text (an error that quotes a URL, a log line), and ``install_log_redaction``
makes every log record of the process go through it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from urllib.parse import urlsplit

from pydantic import SecretStr

from infra.errors import ConfigError
from infra.settings import Settings

ENV_SECRETS = ("LAKELOOP_PSEUDONYM_KEY", "LAKELOOP_CHECKPOINT_KEY", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
               "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")  # the last two: an s3:// lake (infra/storage.py)
MASK = "[redacted]"
_MIN_LEN = 6  # shorter values would blank ordinary words out of every line


def reveal(value: SecretStr | str | None) -> str:
    """A secret setting's value: a ``SecretStr``, or a plain string where settings were copied without validation
    (``model_copy(update=...)``), or None."""
    if value is None:
        return ""
    return value.get_secret_value() if isinstance(value, SecretStr) else str(value)


def secret_values(settings: Settings | None = None) -> list[str]:
    """Every secret value these settings and this process's environment hold (longest first)."""
    found: set[str] = set()
    if settings is not None:
        for name in type(settings).model_fields:
            value = getattr(settings, name)
            if isinstance(value, SecretStr) or (name.endswith(("_password", "_key_password")) and isinstance(value, str)):
                found.add(reveal(value))
        webhooks = reveal(settings.alert_webhooks)
        for item in webhooks.split(","):
            item = item.strip()
            found.add(item.partition("+")[2] if "+" in item.split("://")[0] else item)
        if settings.mlflow_admin_password_file is not None:  # the one secret a setting names by its file
            try:
                found.add(settings.mlflow_admin_secret() or "")
            except ConfigError:
                pass  # unreadable: `up` refuses with its own message, and this process never held the value
    found.update(os.environ.get(name, "") for name in ENV_SECRETS)
    return sorted((v for v in found if len(v) >= _MIN_LEN), key=len, reverse=True)


def mask(secret: str) -> str:
    """What a secret becomes: a URL keeps scheme and host (so people know which webhook), anything else is masked."""
    if secret.startswith(("http://", "https://")):
        parts = urlsplit(secret)
        return f"{parts.scheme}://{parts.hostname or '?'}{f':{parts.port}' if parts.port else ''}/{MASK}"
    return MASK


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:  # longest first: a URL before another it starts with
        if secret and secret in text:
            text = text.replace(secret, mask(secret))
    return text


class _Redacting:
    """A log record factory that redacts the formatted message (and the exception text) of every record."""

    def __init__(self, inner, secrets: list[str]) -> None:  # noqa: ANN001 - logging's factory signature
        self.inner, self.secrets = inner, secrets

    def __call__(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN204
        record = self.inner(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is logging's to report, not ours
            return record
        clean = redact(message, self.secrets)
        if clean != message:
            record.msg, record.args = clean, None
        return record


def install_log_redaction(settings: Settings | None = None) -> int:
    """Redact the process's secrets from every log record from now on; returns how many secrets are watched."""
    secrets = secret_values(settings)
    factory = logging.getLogRecordFactory()
    while isinstance(factory, _Redacting):  # installed before: replace, do not stack
        factory = factory.inner
    logging.setLogRecordFactory(_Redacting(factory, secrets) if secrets else factory)
    return len(secrets)
