"""One typed settings object, read once and passed down.

Order of precedence: explicit overrides (CLI flags) > environment variables (``LAKELOOP_*``) >
``lakeloop.toml`` (in the working directory, or the file named by ``LAKELOOP_CONFIG``) > defaults.
Nothing is created or read at import time.
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from infra.api_keys import is_loopback
from infra.errors import ConfigError

Engine = Literal["local", "spark"]


class Settings(BaseSettings):
    """Every port and path of lakeloop. See README "Configuration"."""

    model_config = SettingsConfigDict(
        env_prefix="LAKELOOP_",
        extra="forbid",
        validate_default=True,
    )

    deployment: Literal["dev", "production"] = Field(
        "dev", validation_alias=AliasChoices("LAKELOOP_ENV", "deployment"),
        description="LAKELOOP_ENV. production: refuse the generated dev secrets (the pseudonymization key made under "
        "<home>/secrets) and insist on keys set by the operator (docs/SECURITY.md).")
    home: Path = Field(Path(".lakeloop"), description="All local state: lake, broker data, MLflow, Dagster, logs, pids.")
    lake_root: str | None = Field(None, description="Root URI of the Delta lake; default <home>/lake. May be s3://, abfss://.")
    jars_dir: Path | None = Field(None, description="Where `lakeloop infra fetch` caches JVM jars; default <home>/jars.")
    # object storage (an s3:// lake_root): infra/storage.py turns these into delta-rs storage options and s3a settings;
    # credentials come from the standard AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN)
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint of an S3-compatible store (MinIO, R2, a test "
                                        "server), e.g. http://127.0.0.1:9000; default: AWS S3 of s3_region.")
    s3_region: str = Field("us-east-1", description="S3 region of the lake's bucket.")
    s3_path_style: bool = Field(True, description="Path-style requests (http://endpoint/bucket/key), which S3-compatible "
                                "servers need; off: virtual-hosted style (bucket.endpoint), as AWS prefers.")
    bind_host: str = Field("127.0.0.1", description="Address every local service binds to.")

    kafka_port: int = Field(9092, ge=1, le=65535)
    kafka_controller_port: int = Field(9093, ge=1, le=65535)
    kafka_bootstrap: str | None = Field(None, description="Bootstrap servers; default <bind_host>:<kafka_port> (the local broker).")
    kafka_heap: str = "512m"
    # a managed / secured Kafka (docs/SECURITY.md): passed to every client (producer, consumers, admin, Spark)
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="security.protocol of every Kafka client; the local broker of `lakeloop up` is PLAINTEXT.")
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="sasl.mechanism with a SASL_* protocol.")
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (a secret: from the environment or a "
                                                  "file the operator protects, never logged).")
    kafka_ssl_cafile: Path | None = Field(None, description="PEM file of the CA that signed the brokers' certificates (SSL, SASL_SSL).")
    kafka_ssl_certfile: Path | None = Field(None, description="PEM client certificate, for brokers that require client TLS.")
    kafka_ssl_keyfile: Path | None = Field(None, description="PEM private key of the client certificate.")
    kafka_ssl_key_password: SecretStr | None = Field(None, description="Password of kafka_ssl_keyfile, if it is encrypted.")
    kafka_ssl_check_hostname: bool = Field(True, description="Check that the broker certificate names the host connected to.")
    topic_replication_factor: int = Field(1, ge=1, description="Replicas of each topic lakeloop creates (3 on a cluster).")
    topic_min_insync_replicas: int | None = Field(None, ge=1, description="min.insync.replicas of each topic lakeloop "
                                                  "creates (2 with 3 replicas: an acknowledged write survives one broker "
                                                  "loss); None: the broker's default.")
    feedback_topic: str = "feedback.events"
    predictions_topic: str = "predictions"
    topic_partitions: int = Field(4, ge=1)

    mlflow_port: int = Field(5000, ge=1, le=65535)
    mlflow_tracking_uri: str | None = Field(None, description="Default http://<bind_host>:<mlflow_port> (the local server).")
    registered_model_name: str = "lakeloop-reward"

    dagster_port: int = Field(3000, ge=1, le=65535)
    # links people open (alerts, Dagster metadata, CLI output): infra/links.py builds them from these
    mlflow_public_url: str | None = Field(None, description="Base URL browsers open the MLflow UI at (a DNS name, a "
                                          "reverse proxy); default the tracking URI, a wildcard bind address replaced "
                                          "by this machine's host name.")
    dagster_public_url: str | None = Field(None, description="Base URL browsers open the Dagster UI at; default "
                                           "http://<bind_host>:<dagster_port>, a wildcard bind address replaced by this "
                                           "machine's host name.")
    serve_port: int = Field(8000, ge=1, le=65535)
    # monitoring and rollout (issue 6)
    alert_webhooks: SecretStr = Field(SecretStr(""), description="Comma-separated alert webhooks `json+URL`, `slack+URL`, "
                                      "`teams+URL` (plain URL = json); alerts also go to <home>/logs/alerts.jsonl. A secret "
                                      "(whoever holds a URL can post to the channel): never printed, cut to its host in records.")
    alert_dedup_seconds: float = Field(3600.0, ge=0, description="The same alert is sent at most once per this many seconds.")
    drift_windows_to_alert: int = Field(3, ge=1, description="Drifted windows in a row before a drift alert (and a retraining request).")
    canary_steps: str = Field("0.1,0.5", description="Canary traffic shares, in order, before promotion to champion.")
    serve_poll_seconds: float = Field(5.0, gt=0, description="How often the scoring service re-reads aliases and the canary share.")
    serve_publish_timeout_s: float = Field(2.0, gt=0, description="The scoring service answers 503 when Kafka has not acknowledged a prediction within this many seconds.")
    serve_max_body_bytes: int = Field(1024 * 1024, ge=1, description="The scoring service answers 413 to a request body over this many bytes, without reading the rest.")
    # the feedback front door (issue 16): HTTP collector, a service of `lakeloop up`
    collector_host: str | None = Field(None, description="Address the collector binds to; default <bind_host>. Beyond "
                                       "loopback it refuses to start without collector_api_keys.")
    collector_port: int = Field(8090, ge=1, le=65535)
    collector_api_keys: str = Field("", description="Comma-separated API key hashes `sha256:<hex>[@app_id]` (never the keys: "
                                    "`lakeloop collector new-key`); `@app_id` limits a key to that app's events. Empty: no "
                                    "key needed, allowed on loopback only.")
    collector_cors_origins: str = Field("", description="Comma-separated origins browsers may call the collector from "
                                        "(CORS); empty: none.")
    collector_max_batch_events: int = Field(500, ge=1, description="The collector answers 413 to a request of more events.")
    collector_max_body_bytes: int = Field(1024 * 1024, ge=1, description="The collector answers 413 to a larger request "
                                          "body, without reading the rest.")
    collector_publish_timeout_s: float = Field(2.0, gt=0, description="The collector answers 503 when Kafka has not "
                                               "acknowledged an event within this many seconds.")
    # surfaces and credentials (issue 18): nothing listens beyond loopback without credentials (infra/surfaces.py;
    # loopback is 127.0.0.1, ::1, localhost)
    kafka_host: str | None = Field(None, description="Address the Kafka broker binds to; default <bind_host>. The local broker "
                                   "is PLAINTEXT: `up` refuses it beyond loopback (apps send through the collector).")
    mlflow_auth: bool | None = Field(None, description="MLflow's basic-auth app: every request but /health needs a user. "
                                     "Default on beyond loopback (required there), off on loopback (on: opt in).")
    mlflow_admin_username: str = Field("admin", description="MLflow's admin user, created by the auth app at its first start.")
    mlflow_admin_password: SecretStr | None = Field(None, description="The admin's password (prefer mlflow_admin_password_file).")
    mlflow_admin_password_file: Path | None = Field(None, description="A file holding the admin's password (first line).")
    mlflow_username: str = Field("lakeloop", description="The MLflow user of lakeloop's own processes (Dagster runs, "
                                 "trainers, `lakeloop serve`, the CLI); `up` creates it with the admin's credentials.")
    mlflow_password: SecretStr | None = Field(None, description="That user's password; with auth on, required.")
    serve_mlflow_username: str = Field("lakeloop-serve", description="A read-only MLflow user for `lakeloop serve` "
                                       "(loads models, reads aliases), created by `up` when serve_mlflow_password is set.")
    serve_mlflow_password: SecretStr | None = Field(None, description="Its password; unset: serve uses mlflow_username.")
    dagster_local_port: int = Field(3001, ge=1, le=65535, description="Beyond loopback the webserver on <bind_host> is "
                                    "read-only and a writable one (lakeloop's own clients, a reverse proxy) listens on "
                                    "127.0.0.1 at this port.")
    serve_host: str | None = Field(None, description="Address `lakeloop serve` binds to; default <bind_host>. Beyond "
                                   "loopback it refuses to start without serve_api_keys.")
    serve_api_keys: str = Field("", description="API key hashes of the scoring service, as collector_api_keys; `@app_id` "
                                "limits a key to requests naming that app_id. Empty: no key needed, loopback only.")

    engine: Engine = "local"
    spark_master: str = "local[*]"
    spark_driver_memory: str = "2g"
    spark_executor_memory: str = Field("1g", description="Heap of each executor on a Spark cluster (not local[*]).")
    spark_executor_python: str | None = Field(None, description="The Python interpreter Spark's executors run (must have "
                                              "lakeloop's third-party dependencies; lakeloop's own code is shipped as a zip). "
                                              "Default: this interpreter for local[*], `python3` on a cluster's workers.")

    max_event_bytes: int = Field(1024 * 1024, ge=1)
    event_time_earliest: date = Field(date(2000, 1, 1), description="Events (and predictions) whose time is before this "
                                      "date are dead letters (stage validate): no partition in year 0001.")
    event_time_max_future_hours: float = Field(24.0, ge=0, description="Events whose time is more than this many hours "
                                               "after the ingest time are dead letters (stage validate).")
    # ingestion (issue 3): flush on whichever comes first
    ingest_group: str = Field("lakeloop-ingest", description="Kafka consumer group of the ingestors.")
    ingest_flush_seconds: float = Field(1.0, gt=0, description="Flush a batch at most this long after its first record.")
    ingest_flush_records: int = Field(12_500, ge=1, description="Flush a batch once it holds this many records.")
    ingest_flush_bytes: int = Field(64 * 1024 * 1024, ge=1, description="Flush a batch once it holds this many payload bytes.")
    ingest_flush_workers: int = Field(2, ge=1, le=64, description="Process mode: worker processes that prepare batches "
                                      "in parallel (each commits in batch order).")
    ingest_flush_mode: Literal["process", "thread"] = Field(
        "process", description="Where flushes (validation, Parquet, commit) run: a worker process beside the consumer "
        "(uses a second core), or a thread of the ingestor (one core, no worker start-up).")

    # ---- autopilot: the loop closes by itself (docs/DESIGN.md, "Autopilot") ------------------
    autopilot: bool = Field(True, description="on: `lakeloop up` runs the ingestors and every sensor/schedule of the loop "
                            "(curation on arrival, retraining, canary, promotion, alerts); off: nothing moves by itself. "
                            "Flip a running instance with `lakeloop autopilot on|off`.")
    autopilot_tick_seconds: int = Field(30, ge=5, description="How often the autopilot sensors look (minimum interval).")
    curation_min_new_rows: int = Field(500, ge=1, description="Curate an event day at once when this many new bronze rows "
                                       "arrived for it ...")
    curation_debounce_minutes: float = Field(2.0, ge=0, description="... else at most every this many minutes per day "
                                             "while it has new rows.")
    reference_wait_minutes: float = Field(60.0, ge=0, description="A reference feedback event (only the response_id "
                                          "or request_id of a scored response) whose prediction record is not in "
                                          "bronze/predictions this many minutes after it was ingested is reported as late "
                                          "(curation metadata, a warning, the silver_reference_late check); it stays "
                                          "pending and is tried again at each curation of its day.")
    signal_labels: bool = Field(False, description="Implicit signals (event_type signal) become training labels: copy -> 1, "
                                "regenerate and abandon -> 0 (dwell and other names give none). Off: silver keeps them "
                                "for slices only.")
    pii_ner: bool = Field(False, description="Curation and raw retention also redact person names and locations "
                          "([PERSON], [LOCATION]) with a Presidio + spaCy NER pass (`pip install 'lakeloop[ner]'`); "
                          "160-900x slower than the structured pass and it also takes public names out of ordinary answers, so off by "
                          "default (docs/design/curation.md).")
    curation_eval_fraction: float = Field(0.1, gt=0, lt=1, description="Share of prompt clusters curation holds out as the "
                                          "eval split (the gate's evidence: more eval prompts, narrower paired intervals).")
    retrain_min_new_rows: int = Field(500, ge=1, description="Retrain when the gold tables grew by this many rows beyond the "
                                      "champion's (or last training's) pinned versions.")
    retrain_cooldown_minutes: float = Field(30.0, ge=0, description="At most one retraining per this many minutes (a drift "
                                            "alert does not wait), and never twice on the same gold versions.")
    canary_window_minutes: float = Field(10.0, gt=0, description="Canary analysis runs once per this many minutes while a "
                                         "canary is in flight.")
    canary_promote_after_labels: int = Field(400, ge=1, description="A canary no better and no worse than the champion is "
                                             "promoted once this many labelled conversations were judged by both models (paired "
                                             "design; labels per arm without it) and its always-valid confidence "
                                             "sequence rules out a drop of 5 points or more.")
    canary_paired: bool = Field(True, description="Judge canary and champion on the SAME labels of both arms' traffic (the "
                                "arm that did not serve a response scores it at analysis time): several times the power of "
                                "comparing the arms. Turn off when the app picks what users see by the score.")
    drift_window_minutes: float = Field(60.0, gt=0, description="Each drift check looks at this many minutes of traffic.")
    erasure_grace_hours: float = Field(168.0, ge=0, description="`lakeloop forget` deletes a user's rows at once; the files that "
                                       "held them are deleted from storage this many hours later (`lakeloop forget --vacuum-due`, "
                                       "`lakeloop lake optimize`), pinned gold versions included.")
    raw_retention_days: float = Field(30.0, ge=0, description="bronze/feedback_events and bronze/predictions keep the raw text "
                                      "(the payload and the text columns) this many days after ingestion; then the autopilot's "
                                      "raw_retention_schedule replaces it with the PII-redacted text (`lakeloop lake redact-expired`).")
    dead_letter_retention_days: float = Field(7.0, ge=0, description="bronze/dead_letters keep the raw bytes this many days after "
                                              "ingestion; then they are replaced by their PII-redacted text.")

    # what the daemon's training and drift runs use (the demo and tests size them down through these)
    train_config: str = Field("{}", description="JSON object of TrainConfig fields for autopilot training runs, "
                              'e.g. {"epochs": 1, "max_length": 128}.')
    gate_must_beat_baselines: bool = Field(True, description="While there is no champion, the gate requires a first model to "
                                           "beat the length baseline and a constant and be no worse than TF-IDF (challengers "
                                           "answer to the champion); off: a first model is registered without it, and "
                                           "autopilot still needs it before making that model champion.")
    gate_slice_tolerance: float = Field(0.05, ge=0, description="The gate fails a candidate whose metric on a slice (app, "
                                        "model, event type, length, implicit signals) is below the champion's by more than this.")
    gate_cross_fit: bool = Field(True, description="A first model (no champion) whose winner is a cheap family is judged "
                                 "against the baselines on the eval split plus its train split scored out of fold by the same "
                                 "recipe (nested 5-fold cross-fit, trainers/crossfit.py): ~2.5x the prompts, the eval split "
                                 "never chooses. Off: the eval split alone.")
    eval_n_boot: int = Field(1000, ge=50, description="Bootstrap resamples for the evaluation's 95% intervals.")
    drift_reference_sample: int = Field(5000, ge=50, description="Training rows scored by the champion as drift reference.")

    @field_validator("autopilot", "signal_labels", "pii_ner", mode="before")
    @classmethod
    def _on_off(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().lower() in ("on", "off"):
            return v.strip().lower() == "on"
        return v

    @field_validator("mlflow_public_url", "dagster_public_url", mode="after")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"{v!r} is not an http(s) URL")
        return v

    @field_validator("home", mode="after")
    @classmethod
    def _absolute_home(cls, v: Path) -> Path:
        return v.expanduser().absolute()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = Path(os.environ.get("LAKELOOP_CONFIG", "lakeloop.toml"))
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=toml_file))

    # ---- derived locations -------------------------------------------------------------
    @property
    def lake(self) -> str:
        return self.lake_root or str(self.home / "lake")

    @property
    def jars(self) -> Path:
        return (self.jars_dir or self.home / "jars").expanduser().absolute()

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def kafka_data_dir(self) -> Path:
        return self.home / "kafka"

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    @property
    def kafka_bind_host(self) -> str:
        return self.kafka_host or self.bind_host

    @property
    def bootstrap_servers(self) -> str:
        return self.kafka_bootstrap or f"{self.kafka_bind_host}:{self.kafka_port}"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"http://{self.bind_host}:{self.mlflow_port}"

    @property
    def dagster_read_only(self) -> bool:
        """The webserver on bind_host is read-only (beyond loopback); a writable one listens on 127.0.0.1."""
        return not is_loopback(self.bind_host)

    @property
    def dagster_url(self) -> str:
        """The writable webserver, which lakeloop's own clients use (127.0.0.1:dagster_local_port beyond loopback)."""
        if self.dagster_read_only:
            return f"http://127.0.0.1:{self.dagster_local_port}"
        return f"http://{self.bind_host}:{self.dagster_port}"

    @property
    def mlflow_auth_on(self) -> bool:
        return self.mlflow_auth if self.mlflow_auth is not None else not is_loopback(self.bind_host)

    def mlflow_admin_secret(self) -> str | None:
        """The MLflow admin's password: mlflow_admin_password, else the first line of mlflow_admin_password_file."""
        if self.mlflow_admin_password is not None:
            return self.mlflow_admin_password.get_secret_value() or None
        if self.mlflow_admin_password_file is not None:
            try:
                lines = self.mlflow_admin_password_file.read_text().splitlines()
            except OSError as exc:
                raise ConfigError(f"LAKELOOP_MLFLOW_ADMIN_PASSWORD_FILE: cannot read {self.mlflow_admin_password_file} "
                                  f"({exc.strerror})", hint="point it at a readable file holding the password") from None
            return lines[0].strip() if lines and lines[0].strip() else None
        return None

    def mlflow_client_env(self, *, serve: bool = False) -> dict[str, str]:
        """MLFLOW_TRACKING_USERNAME/PASSWORD for lakeloop's MLflow clients (read by MLflow at each request), the
        read-only serve user's with ``serve`` when it has a password; empty without a password."""
        user, password = self.mlflow_username, self.mlflow_password
        if serve and self.serve_mlflow_password is not None and self.serve_mlflow_password.get_secret_value():
            user, password = self.serve_mlflow_username, self.serve_mlflow_password
        if password is None or not password.get_secret_value():
            return {}
        return {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password.get_secret_value()}

    @property
    def serve_bind_host(self) -> str:
        return self.serve_host or self.bind_host

    @property
    def serve_url(self) -> str:
        return f"http://{self.bind_host}:{self.serve_port}"

    @property
    def collector_bind_host(self) -> str:
        return self.collector_host or self.bind_host

    @property
    def collector_url(self) -> str:
        """Where local clients reach the collector (loopback when it binds every address)."""
        host = self.collector_bind_host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"http://[{host}]:{self.collector_port}" if ":" in host else f"http://{host}:{self.collector_port}"

    def env(self) -> dict[str, str]:
        """These settings as LAKELOOP_* variables, for child processes (services, trainers)."""
        out: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            alias = type(self).model_fields[name].validation_alias
            var = alias.choices[0] if isinstance(alias, AliasChoices) else f"LAKELOOP_{name.upper()}"
            out[str(var)] = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        return out


def load_settings(**overrides: Any) -> Settings:
    """Read the settings once; CLI flags come in as overrides. Wrong values raise ConfigError."""
    from pydantic import ValidationError

    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(
            f"invalid lakeloop settings: {problems}",
            hint="check LAKELOOP_* environment variables and lakeloop.toml (see README, Configuration)",
        ) from None
