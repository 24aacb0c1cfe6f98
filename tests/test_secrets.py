"""Secrets stay secret: settings dumps, log records, CLI error lines, alert records and MLflow params never carry
a webhook URL, a password or a key (infra/secrets.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from infra.secrets import install_log_redaction, redact, secret_values
from infra.settings import load_settings

HOOK = "https://hooks.slack.com/services/T000/B000/very-secret-token"
SASL = "sasl-password-42"
KEY = "pseudonym-key-0123456789abcdef0123"


@pytest.fixture()
def secret_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LAKELOOP_PSEUDONYM_KEY", KEY)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "mlflow-pass-77")
    return load_settings(home=tmp_path, alert_webhooks=f"slack+{HOOK},json+http://127.0.0.1:1/hook/abcdef123",
                         kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="PLAIN", kafka_sasl_username="u",
                         kafka_sasl_password=SASL)


def _leaks(text: str) -> list[str]:
    return [s for s in (HOOK, "very-secret-token", SASL, KEY, "mlflow-pass-77", "abcdef123") if s in text]


def test_settings_dumps_hold_no_secret(secret_settings) -> None:
    assert _leaks(repr(secret_settings)) == [] and _leaks(secret_settings.model_dump_json()) == []
    assert set(secret_values(secret_settings)) >= {HOOK, SASL, KEY, "mlflow-pass-77", "http://127.0.0.1:1/hook/abcdef123"}
    assert redact(f"POST {HOOK} failed", secret_values(secret_settings)) == "POST https://hooks.slack.com/[redacted] failed"


def test_every_log_record_is_redacted(secret_settings, caplog: pytest.LogCaptureFixture) -> None:
    before = logging.getLogRecordFactory()
    try:
        assert install_log_redaction(secret_settings) >= 5
        with caplog.at_level(logging.INFO):
            logging.getLogger("lakeloop.test").info("connecting with %s to %s (key %s)", SASL, HOOK, KEY)
            logging.getLogger("urllib3").warning(f"retrying {HOOK}")  # a library's record too
        assert _leaks(caplog.text) == [] and "[redacted]" in caplog.text
    finally:
        logging.setLogRecordFactory(before)


def test_alert_records_hold_no_webhook_url(secret_settings) -> None:
    from monitors.alerts import Alert, notifier_from_settings

    notifier = notifier_from_settings(secret_settings)
    notifier.notify(Alert(kind="drift", summary="s", details={"note": f"posted to {HOOK} with {SASL}"}))
    text = (secret_settings.logs_dir / "alerts.jsonl").read_text()
    assert json.loads(text.splitlines()[-1])["failures"] and _leaks(text) == []


def test_the_cli_error_line_is_redacted(secret_settings, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from infra.errors import ConfigError
    from orchestration import cli

    monkeypatch.setenv("LAKELOOP_HOME", str(secret_settings.home))
    monkeypatch.setenv("LAKELOOP_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("LAKELOOP_KAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("LAKELOOP_KAFKA_SASL_USERNAME", "u")
    monkeypatch.setenv("LAKELOOP_KAFKA_SASL_PASSWORD", SASL)

    def boom() -> None:
        raise ConfigError(f"broker refused password {SASL}", hint=f"check {SASL}")

    before = logging.getLogRecordFactory()
    monkeypatch.setattr(cli, "app", boom)
    monkeypatch.setattr(cli, "exit_process", lambda code: None)
    try:
        cli.main()
    finally:
        logging.setLogRecordFactory(before)
    err = capsys.readouterr().err
    assert "broker refused password [redacted]" in err and SASL not in err
