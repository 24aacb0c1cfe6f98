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

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from infra.errors import ConfigError

Engine = Literal["local", "spark"]


class Settings(BaseSettings):
    """Every port and path of lakeloop. See README "Configuration"."""

    model_config = SettingsConfigDict(
        env_prefix="LAKELOOP_",
        extra="forbid",
        validate_default=True,
    )

    home: Path = Field(Path(".lakeloop"), description="All local state: lake, broker data, MLflow, Dagster, logs, pids.")
    lake_root: str | None = Field(None, description="Root URI of the Delta lake; default <home>/lake. May be s3://, abfss://.")
    jars_dir: Path | None = Field(None, description="Where `lakeloop infra fetch` caches JVM jars; default <home>/jars.")
    bind_host: str = Field("127.0.0.1", description="Address every local service binds to.")

    kafka_port: int = Field(9092, ge=1, le=65535)
    kafka_controller_port: int = Field(9093, ge=1, le=65535)
    kafka_bootstrap: str | None = Field(None, description="Bootstrap servers; default <bind_host>:<kafka_port> (the local broker).")
    kafka_heap: str = "512m"
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
    alert_webhooks: str = Field("", description="Comma-separated alert webhooks `json+URL`, `slack+URL`, `teams+URL` (plain URL = json); alerts also go to <home>/logs/alerts.jsonl.")
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
    def bootstrap_servers(self) -> str:
        return self.kafka_bootstrap or f"{self.bind_host}:{self.kafka_port}"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"http://{self.bind_host}:{self.mlflow_port}"

    @property
    def dagster_url(self) -> str:
        return f"http://{self.bind_host}:{self.dagster_port}"

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
            if value is not None:
                out[f"LAKELOOP_{name.upper()}"] = str(value)
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
