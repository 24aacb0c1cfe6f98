"""The local platform: real services started as processes, with health checks, logs and clean shutdown.

``up`` starts what is not running (Kafka in KRaft mode, the MLflow tracking server, the Dagster webserver
and daemon, the feedback collector, and with autopilot on the two continuous ingestors, each under
``infra.supervisor``), waits until each answers, and records a pid file per service under ``<home>/run``.
``down`` stops only what those pid files name, the ingestors first: SIGTERM to the process group, SIGKILL after
a timeout.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests

from infra.errors import MissingDependencyError, ServiceError
from infra import mlflow_auth
from infra.api_keys import is_loopback
from infra.jars import require_jars
from infra.settings import Settings
from infra.surfaces import require_credentials
from infra.supervisor import read_state

INFRA_DIR = Path(__file__).resolve().parent
REPO_ROOT = INFRA_DIR.parent


@dataclass
class ServiceSpec:
    name: str
    command: list[str]
    port: int | None
    url: str
    health: Callable[[], bool]
    marker: str  # a string that must appear in the process's command line (guards against pid reuse)
    env: dict[str, str] = field(default_factory=dict)
    prepare: Callable[[], None] | None = None
    start_timeout: float = 90.0
    after: tuple[str, ...] = ()  # started only once these (earlier in service_specs) are healthy
    host: str | None = None  # the address it binds (default settings.bind_host)
    ready: Callable[[], str] | None = None  # run once it is healthy (MLflow: its users); returns what it did


@dataclass
class ServiceStatus:
    name: str
    pid: int | None
    address: str
    running: bool
    healthy: bool
    note: str = ""


# ---------------------------------------------------------------------------------------------
# health checks
# ---------------------------------------------------------------------------------------------
def kafka_healthy(bootstrap: str, timeout: float = 3.0, *, settings: Settings | None = None) -> bool:
    """The broker answers a metadata request (with the settings' TLS / SASL when given: a cluster beyond loopback)."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    from infra.kafka_security import client_config

    config = {**client_config(settings), "bootstrap_servers": bootstrap} if settings is not None else {"bootstrap_servers": bootstrap}
    try:
        admin = KafkaAdminClient(**config, request_timeout_ms=int(timeout * 1000), bootstrap_timeout_ms=int(timeout * 1000))
    except (KafkaError, OSError, ValueError):
        return False
    try:
        admin.list_topics()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        return requests.get(url, timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def dagster_graphql_ok(url: str, timeout: float = 3.0) -> bool:
    try:
        r = requests.post(f"{url}/graphql", json={"query": "{ version }"}, timeout=timeout)
        return r.status_code == 200 and "version" in r.json().get("data", {})
    except (requests.RequestException, ValueError):
        return False


def dagster_daemon_ok(url: str, timeout: float = 3.0) -> bool:
    """Every required daemon (scheduler, sensors, run queue, ...) has a fresh heartbeat, per the webserver."""
    query = "{ instance { daemonHealth { allDaemonStatuses { daemonType healthy required } } } }"
    try:
        r = requests.post(f"{url}/graphql", json={"query": query}, timeout=timeout)
        statuses = r.json()["data"]["instance"]["daemonHealth"]["allDaemonStatuses"]
    except (requests.RequestException, ValueError, KeyError, TypeError):
        return False
    return bool(statuses) and all(s["healthy"] for s in statuses if s["required"])


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


# ---------------------------------------------------------------------------------------------
# the services
# ---------------------------------------------------------------------------------------------
def _venv_script(name: str) -> str:
    """A console script installed beside this interpreter (the project's venv)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise MissingDependencyError(f"`{name}` is not installed", hint="run `pip install -e .` in the repo's venv")
    return found


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise MissingDependencyError("Java is not installed", hint="install Java 17+ (apt-get install openjdk-17-jre-headless) or set JAVA_HOME")
    return found


def kafka_properties(settings: Settings) -> str:
    host = settings.kafka_bind_host
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@{host}:{settings.kafka_controller_port}",
            f"listeners=PLAINTEXT://{host}:{settings.kafka_port},CONTROLLER://{host}:{settings.kafka_controller_port}",
            f"advertised.listeners=PLAINTEXT://{host}:{settings.kafka_port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={settings.kafka_data_dir / 'data'}",
            f"num.partitions={settings.topic_partitions}",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",
            "message.max.bytes=8388608",
            "log.retention.hours=168",
            "",
        ]
    )


def _kafka_spec(settings: Settings) -> ServiceSpec:
    jars = require_jars(settings, "kafka")
    java = _java()
    conf = settings.kafka_data_dir / "server.properties"
    classpath = f"{jars}/*"

    def prepare() -> None:
        settings.kafka_data_dir.mkdir(parents=True, exist_ok=True)
        conf.write_text(kafka_properties(settings))
        if (settings.kafka_data_dir / "data" / "meta.properties").exists():
            return
        cid = "-"
        while cid.startswith("-"):  # an id starting with '-' would be read as an option by the format tool
            cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        proc = subprocess.run(
            [java, "-cp", classpath, "kafka.tools.StorageTool", "format", "-t", cid, "-c", str(conf)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise ServiceError(
                f"formatting Kafka storage failed: {proc.stderr.strip()[-500:] or proc.stdout.strip()[-500:]}",
                hint=f"remove {settings.kafka_data_dir} and run `lakeloop up` again",
            )

    return ServiceSpec(
        name="kafka",
        command=[
            java,
            f"-Xmx{settings.kafka_heap}",
            f"-Xms{settings.kafka_heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={INFRA_DIR / 'kafka-log4j2.properties'}",
            f"-Dkafka.logs.dir={settings.logs_dir}",
            "-cp",
            classpath,
            "kafka.Kafka",
            str(conf),
        ],
        port=settings.kafka_port,
        url=settings.bootstrap_servers,
        health=lambda: kafka_healthy(settings.bootstrap_servers),
        marker="kafka.Kafka",
        prepare=prepare,
        host=settings.kafka_bind_host,
    )


def _mlflow_spec(settings: Settings) -> ServiceSpec:
    """The tracking server; with mlflow_auth on (the default beyond loopback) its basic-auth app, whose users
    ``mlflow_auth.ensure_users`` sets up once it answers (/health needs no password)."""
    store = settings.mlflow_dir
    auth = settings.mlflow_auth_on
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}

    def prepare() -> None:
        (store / "artifacts").mkdir(parents=True, exist_ok=True)
        if auth:
            mlflow_auth.write_auth_config(settings)
            env.update(mlflow_auth.server_env(settings))  # read by _start after prepare

    return ServiceSpec(
        name="mlflow",
        command=[
            _venv_script("mlflow"),
            "server",
            "--host", settings.bind_host,
            "--port", str(settings.mlflow_port),
            "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
            "--artifacts-destination", str(store / "artifacts"),
            "--serve-artifacts",
            "--workers", "1",
            *(["--app-name", "basic-auth"] if auth else []),
            *_mlflow_allowed_hosts(settings),
        ],
        port=settings.mlflow_port,
        url=f"http://{settings.bind_host}:{settings.mlflow_port}",
        health=lambda: http_ok(f"http://{settings.bind_host}:{settings.mlflow_port}/health"),
        marker="mlflow",
        env=env,
        prepare=prepare,
        ready=(lambda: mlflow_auth.ensure_users(settings)) if auth else None,
    )


# MLflow 3's default Host allow-list (mlflow.server.security_utils.get_default_allowed_hosts: loopback names and
# private addresses), written out: importing mlflow to read it costs `up` ~10 s
MLFLOW_DEFAULT_ALLOWED_HOSTS = ("localhost", "127.0.0.1", "[::1]", "0.0.0.0", "localhost:*", "127.0.0.1:*", "[[]::1]:*",
                                "0.0.0.0:*", "192.168.*", "10.*", *(f"172.{n}.*" for n in range(16, 32)), "fc00:*", "fd00:*")


def _mlflow_allowed_hosts(settings: Settings) -> list[str]:
    """`--allowed-hosts` when MLflow's default (localhost and private addresses) would refuse the Host header of
    its own address (a specific bind_host such as 127.0.0.2 or a public one) or of mlflow_public_url."""
    from urllib.parse import urlparse

    extra = []
    if settings.bind_host not in ("0.0.0.0", "::", "") and not is_loopback(settings.bind_host):
        extra.append(settings.bind_host)
    if settings.mlflow_public_url:
        extra.append(urlparse(settings.mlflow_public_url).hostname or "")
    if not extra:
        return []
    hosts = list(MLFLOW_DEFAULT_ALLOWED_HOSTS)
    added = [h for e in extra if e and e not in hosts for h in (e, f"{e}:*")]
    return ["--allowed-hosts", ",".join(hosts + added)] if added else []


def write_dagster_home(settings: Settings) -> Path:
    """DAGSTER_HOME with an instance config and a workspace that loads lakeloop's Definitions."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(
        "\n".join(
            [
                "telemetry:",
                "  enabled: false",
                "run_coordinator:",
                "  module: dagster.core.run_coordinator",
                "  class: QueuedRunCoordinator",
                "  config:",
                "    max_concurrent_runs: 2",
                # one curation run at a time (two days at once race on the dedup index), one training at a time
                "    tag_concurrency_limits:",
                "      - key: lakeloop/curation",
                "        limit: 1",
                "      - key: lakeloop/training",
                "        limit: 1",
                "run_monitoring:",
                "  enabled: true",
                # a run whose worker died (fail_orphaned_runs, run monitoring's start timeout) is re-executed from
                # its failed step once; a run that failed in an asset or a check is not retried
                "run_retries:",
                "  enabled: true",
                "  max_retries: 1",
                "  retry_on_asset_or_op_failure: false",
                "",
            ]
        )
    )
    (home / "workspace.yaml").write_text(
        "\n".join(
            [
                "load_from:",
                "  - python_module:",
                "      module_name: orchestration.definitions",
                "      location_name: lakeloop",
                f"      working_directory: {REPO_ROOT}",
                f"      executable_path: {sys.executable}",
                "",
            ]
        )
    )
    return home


def init_dagster_instance(settings: Settings) -> None:
    """Create or migrate the instance's SQLite storages once, before the webserver, daemon and code
    servers open them concurrently (concurrent first creation leaves alembic with two heads)."""
    home = settings.dagster_home
    if (home / ".initialized").exists():
        return
    proc = subprocess.run(
        [_venv_script("dagster"), "instance", "migrate"],
        env={**os.environ, "DAGSTER_HOME": str(home)},
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise ServiceError(
            f"initializing the Dagster instance in {home} failed: {(proc.stderr or proc.stdout).strip()[-800:]}",
            hint=f"remove {home} (run history is lost) and run `lakeloop up` again",
        )
    (home / ".initialized").write_text("ok\n")


RUN_WORKER_STARTED = "Started process for run (pid: "  # Dagster's engine event when a run worker is up


def _start_ticks(pid: int) -> int | None:
    """When the live process ``pid`` started, in clock ticks after boot (field 22 of /proc/<pid>/stat); None if
    there is no such process or it is a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[19])


def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def _started_at(pid: int) -> float | None:
    """When the live process ``pid`` started (epoch seconds), or None."""
    ticks = _start_ticks(pid)
    if ticks is None:
        return None
    btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
    return btime + ticks / os.sysconf("SC_CLK_TCK")


def fail_orphaned_runs(settings: Settings, *, log: Log = print) -> list[str]:
    """Mark failed the runs the instance holds as in flight whose run worker process is gone; returns their ids.

    With Dagster's default run launcher a run worker is a child of the daemon's code server, in the daemon's process
    group. When that group dies at once (SIGKILL to the group, an OOM kill of the service, a host reboot) its runs
    stay STARTED for ever and keep their run-queue slots: run monitoring cannot see it (the default launcher has no
    worker health check). Marked failed (reason UNEXPECTED_TERMINATION), they are re-executed from the failed step
    by the daemon's run retries (dagster.yaml). Left alone: a run whose worker lives (only the daemon died: its code
    server finishes the run), and a run with no worker pid recorded (in-process `lakeloop materialize`, or not
    started yet, which run monitoring's start timeout covers). Call it before the daemon starts."""
    import dagster as dg
    from dagster._core.events import DagsterEventType, JobFailureData, RunFailureReason

    in_flight = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.CANCELING]
    failed: list[str] = []
    with dg.DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        for run in instance.get_runs(filters=dg.RunsFilter(statuses=in_flight)):
            records = instance.get_records_for_run(run.run_id, of_type=DagsterEventType.ENGINE_EVENT).records
            started = [(r.event_log_entry.timestamp, r.event_log_entry.dagster_event.message or "") for r in records
                       if r.event_log_entry.dagster_event and (r.event_log_entry.dagster_event.message or "").startswith(RUN_WORKER_STARTED)]
            if not started:
                continue
            at, message = started[-1]
            pid = int(message[len(RUN_WORKER_STARTED):].split(")", 1)[0])
            began = _started_at(pid)
            if began is not None and began <= at + 1.0:  # a later start time: the pid was reused
                continue
            message = (f"Run worker (pid {pid}) is gone: it died with the Dagster daemon's process group. "
                       "Marked failed by `lakeloop up` so that run retries re-execute it.")
            instance.report_run_failed(run, message, JobFailureData(error=None, failure_reason=RunFailureReason.UNEXPECTED_TERMINATION))
            log(f"dagster-daemon: run {run.run_id} ({run.tags.get('dagster/partition', 'unpartitioned')}) lost its worker (pid {pid}); "
                "marked failed, run retries re-execute it")
            failed.append(run.run_id)
    return failed


def _dagster_specs(settings: Settings) -> list[ServiceSpec]:
    """Webserver and daemon. Beyond loopback the webserver on bind_host is read-only (no mutation: no launch, no
    backfill, no sensor toggles; it also closes the cross-site request risk of its GraphQL endpoint), and a writable
    `dagster-webserver-local` listens on 127.0.0.1:dagster_local_port for lakeloop's own clients (settings.dagster_url)
    and a reverse proxy with credentials (docs/deploy/dagster-proxy.md)."""
    home = settings.dagster_home
    env = {"DAGSTER_HOME": str(home), **settings.env(), **settings.mlflow_client_env()}
    url = settings.dagster_url  # the writable one

    def prepare() -> None:
        write_dagster_home(settings)
        init_dagster_instance(settings)

    def webserver(name: str, host: str, port: int, *, read_only: bool) -> ServiceSpec:
        web_url = f"http://{host}:{port}"
        return ServiceSpec(
            name=name,
            command=[
                _venv_script("dagster-webserver"),
                "-h", host,
                "-p", str(port),
                "-w", str(home / "workspace.yaml"),
                *(["--read-only"] if read_only else []),
            ],
            port=port,
            url=web_url + (" (read-only)" if read_only else ""),
            health=lambda: dagster_graphql_ok(web_url),
            marker="dagster-webserver",
            env=env,
            prepare=prepare,
            start_timeout=180.0,
            host=host,
        )

    web = webserver("dagster-webserver", settings.bind_host, settings.dagster_port, read_only=settings.dagster_read_only)
    local = [webserver(LOCAL_WEBSERVER, "127.0.0.1", settings.dagster_local_port, read_only=False)] \
        if settings.dagster_read_only else []

    def prepare_daemon() -> None:
        prepare()
        fail_orphaned_runs(settings)

    daemon = ServiceSpec(
        name="dagster-daemon",
        command=[_venv_script("dagster-daemon"), "run", "-w", str(home / "workspace.yaml")],
        port=None,
        url="(background: schedules, sensors, run queue)",
        health=lambda: dagster_daemon_ok(url),
        marker="dagster-daemon",
        env=env,
        prepare=prepare_daemon,
    )
    return [web, *local, daemon]


INGEST_STREAMS = {"ingest-feedback": "feedback", "ingest-predictions": "predictions"}


def state_file(settings: Settings, name: str) -> Path:
    """The supervisor's state of a continuous service (``infra.supervisor``)."""
    return settings.run_dir / f"{name}.state.json"


def _ingest_specs(settings: Settings) -> list[ServiceSpec]:
    """The continuous ingestors: `lakeloop ingest --stream S` under a supervisor that restarts it with backoff.

    A supervised service, not a Dagster run: a consumer never ends, a run is bounded work (see
    docs/design/ingestion.md, "Continuous ingestion"). The static member id gives a restarted ingestor its
    partitions back at once; the offsets come from the Delta log either way."""

    def prepare() -> None:
        if not kafka_healthy(settings.bootstrap_servers, settings=settings):
            raise ServiceError(f"the ingestors need Kafka at {settings.bootstrap_servers}, which does not answer",
                               hint="`lakeloop up` starts it (or set LAKELOOP_KAFKA_BOOTSTRAP)")
        settings.run_dir.mkdir(parents=True, exist_ok=True)

    specs = []
    for name, stream in INGEST_STREAMS.items():
        log = settings.logs_dir / f"{name}.log"
        specs.append(ServiceSpec(
            name=name,
            command=[
                sys.executable, "-m", "infra.supervisor", "--name", name,
                "--state", str(state_file(settings, name)), "--log", str(log),
                "--",
                _venv_script("lakeloop"), "ingest", "--stream", stream, "--instance-id", name,
            ],
            port=None,
            url=f"{settings.bootstrap_servers} -> {stream} (continuous)",
            health=lambda name=name: ingest_healthy(settings, name),
            marker=f"infra.supervisor --name {name}",
            env=settings.env(),
            prepare=prepare,
            start_timeout=60.0,
            after=("kafka",),
        ))
    return specs


def _collector_spec(settings: Settings) -> ServiceSpec:
    """The feedback front door: `lakeloop collector run` (POST /v1/feedback -> Kafka), after Kafka. Healthy when
    /readyz answers 200: it can take feedback now (its producer is connected to the broker)."""
    url = settings.collector_url
    return ServiceSpec(
        name="collector",
        command=[_venv_script("lakeloop"), "collector", "run"],
        port=settings.collector_port,
        url=f"{url}/v1/feedback",
        health=lambda: http_ok(f"{url}/readyz"),
        marker="collector run",
        env=settings.env(),
        start_timeout=60.0,
        after=("kafka",),
        host=settings.collector_bind_host,
    )


def service_specs(settings: Settings, only: list[str] | None = None) -> list[ServiceSpec]:
    """The services ``up`` starts, in order; the ingestors only with autopilot on. With ``only``, just those (the
    others are not built: MLflow alone needs no Kafka jars)."""
    def want(*names: str) -> bool:
        return only is None or bool(set(names) & set(only))

    specs = [*([_kafka_spec(settings)] if want("kafka") else []),
             *([_mlflow_spec(settings)] if want("mlflow") else []),
             *(_dagster_specs(settings) if want("dagster-webserver", LOCAL_WEBSERVER, "dagster-daemon") else []),
             *([_collector_spec(settings)] if want("collector") else [])]
    if settings.autopilot and want(*INGEST_STREAMS):
        specs += _ingest_specs(settings)
    return [s for s in specs if only is None or s.name in only]


SERVICE_NAMES = ("kafka", "mlflow", "dagster-webserver", "dagster-daemon", "collector")  # the platform, whatever the autopilot
LOCAL_WEBSERVER = "dagster-webserver-local"  # the writable webserver on 127.0.0.1, only when bind_host is beyond loopback
INGEST_SERVICE_NAMES = tuple(INGEST_STREAMS)  # supervised ingestors: started with autopilot on
ALL_SERVICE_NAMES = SERVICE_NAMES + INGEST_SERVICE_NAMES
# every pid file `down` and `status` look at, in start order
_PID_NAMES = SERVICE_NAMES[:3] + (LOCAL_WEBSERVER,) + SERVICE_NAMES[3:] + INGEST_SERVICE_NAMES


# ---------------------------------------------------------------------------------------------
# pid files
# ---------------------------------------------------------------------------------------------
def _pid_file(settings: Settings, name: str) -> Path:
    return settings.run_dir / f"{name}.pid"


def _read_pid(settings: Settings, name: str) -> dict | None:
    p = _pid_file(settings, name)
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except (ValueError, OSError):
        return {"pid": None, "marker": ""}


def _alive(pid: int | None, marker: str, started: list | None = None) -> bool:
    """``pid`` is the process a pid file names: alive, its command line holds ``marker``, and, when the pid file
    recorded it, ``started`` = [boot id, start ticks] is still the process's. After a reboot or a crash the pid may
    belong to another process, even one whose command line holds the marker (a `tail -f` of the service's log):
    its boot or its start time differs."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.split(")")[-1].split()[0] == "Z":  # zombie: exited, not yet reaped
        return False
    if started is not None and list(started) != [_boot_id(), _start_ticks(pid)]:
        return False
    return marker in cmdline


def _alive_info(info: dict, marker: str | None = None) -> bool:
    """The process of a pid file's record (see ``_alive``)."""
    return _alive(info.get("pid"), info.get("marker", "") if marker is None else marker, info.get("proc_start"))


# ---------------------------------------------------------------------------------------------
# up / down / status
# ---------------------------------------------------------------------------------------------
Log = Callable[[str], None]


def _start(settings: Settings, spec: ServiceSpec, log: Log) -> subprocess.Popen | None:
    info = _read_pid(settings, spec.name)
    if info is not None:
        if _alive_info(info, spec.marker):
            log(f"{spec.name}: already running (pid {info['pid']})")
            return None
        log(f"{spec.name}: removing stale pid file {_pid_file(settings, spec.name)} (pid {info.get('pid')} is gone)")
        _pid_file(settings, spec.name).unlink(missing_ok=True)
    host = spec.host or settings.bind_host
    if spec.port is not None and port_in_use(host, spec.port):
        raise ServiceError(
            f"{spec.name}: port {spec.port} on {host} is taken by another process",
            hint=f"stop that process or choose another port (LAKELOOP_{spec.name.split('-')[0].upper()}_PORT)",
        )
    if spec.prepare:
        spec.prepare()
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    logfile = open(settings.logs_dir / f"{spec.name}.log", "ab")  # noqa: SIM115 - handed to the child
    env = {**os.environ, **spec.env}
    proc = subprocess.Popen(
        spec.command,
        stdout=logfile,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=str(REPO_ROOT),
        start_new_session=True,
    )
    logfile.close()
    record = {"pid": proc.pid, "marker": spec.marker, "started": time.time(), "proc_start": [_boot_id(), _start_ticks(proc.pid)]}
    _pid_file(settings, spec.name).write_text(json.dumps(record))
    log(f"{spec.name}: started (pid {proc.pid}), log {settings.logs_dir / (spec.name + '.log')}")
    return proc


def up(settings: Settings, *, log: Log = print, only: list[str] | None = None) -> list[ServiceStatus]:
    """Start every service that is not running and wait until all are healthy. Idempotent. Nothing starts while a
    surface would listen beyond loopback without its credentials (``infra.surfaces``: one ConfigError lists all)."""
    require_credentials(settings)
    specs = service_specs(settings, only)
    if not settings.autopilot and (only is None or set(only) & set(INGEST_SERVICE_NAMES)):
        running = [n for n in INGEST_SERVICE_NAMES if (info := _read_pid(settings, n)) and _alive_info(info)]
        log("autopilot is off: the continuous ingestors are not started (`lakeloop ingest` runs one by hand)"
            + (f"; still running from before: {', '.join(running)} (`lakeloop down` stops them)" if running else ""))
    started: list[tuple[ServiceSpec, subprocess.Popen]] = []
    for spec in specs:
        if spec.after:
            continue  # started below, once what it needs is healthy
        proc = _start(settings, spec, log)
        if proc is not None:
            started.append((spec, proc))
    for spec in specs:
        if spec.after:  # what it needs comes earlier in the list and was waited for (or checks itself in prepare)
            proc = _start(settings, spec, log)
            if proc is not None:
                started.append((spec, proc))
        deadline = time.monotonic() + spec.start_timeout
        proc = next((p for s, p in started if s is spec), None)
        while not spec.health():
            if proc is not None and proc.poll() is not None:
                tail = _tail(settings.logs_dir / f"{spec.name}.log")
                raise ServiceError(
                    f"{spec.name} exited with code {proc.returncode} while starting. Last log lines:\n{tail}",
                    hint=f"see {settings.logs_dir / (spec.name + '.log')}",
                )
            if time.monotonic() > deadline:
                why = f": {_ingest_status(settings, spec.name, _read_pid(settings, spec.name)).note}" if spec.name in INGEST_STREAMS else ""
                raise ServiceError(
                    f"{spec.name} did not become healthy within {spec.start_timeout:.0f}s{why}",
                    hint=f"see {settings.logs_dir / (spec.name + '.log')}; `lakeloop down` then `lakeloop up` to retry",
                )
            time.sleep(0.5)
        log(f"{spec.name}: healthy at {spec.url}")
        if spec.ready is not None:
            log(f"{spec.name}: {spec.ready()}")
    return status(settings)


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _stop_pid(pid: int, marker: str, timeout: float, started: list | None = None) -> str:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return "already gone"
    except PermissionError:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid, marker, started):
            return "stopped"
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return "stopped"
    return f"killed after {timeout:.0f}s"


def down(settings: Settings, *, log: Log = print, timeout: float = 20.0, only: list[str] | None = None) -> None:
    """Stop only what ``up`` started (pid files), or of those only the services in ``only`` (`lakeloop autopilot
    off` stops the ingestors alone): SIGTERM, then SIGKILL after ``timeout``. The ingestors go first (SIGTERM reaches
    supervisor and ingestor: the ingestor flushes its batch, commits and exits, then the supervisor), while Kafka
    still answers."""
    for name in reversed(_PID_NAMES):
        if only is not None and name not in only:
            continue
        info = _read_pid(settings, name)
        if info is None:
            continue
        pid, marker = info.get("pid"), info.get("marker", "")
        if not _alive_info(info):
            log(f"{name}: not running (removed stale pid file)")
        else:
            log(f"{name}: {_stop_pid(pid, marker, timeout, info.get('proc_start'))} (pid {pid})")
        _pid_file(settings, name).unlink(missing_ok=True)


def status(settings: Settings) -> list[ServiceStatus]:
    """Each service: pid, address, running, healthy. Never starts anything."""
    public_dagster = f"http://{settings.bind_host}:{settings.dagster_port}"
    checks: dict[str, tuple[int | None, str, Callable[[], bool]]] = {
        "kafka": (settings.kafka_port, settings.bootstrap_servers, lambda: kafka_healthy(settings.bootstrap_servers, 2.0, settings=settings)),
        "mlflow": (settings.mlflow_port, settings.tracking_uri, lambda: http_ok(f"{settings.tracking_uri}/health")),
        "dagster-webserver": (settings.dagster_port, public_dagster + (" (read-only)" if settings.dagster_read_only else ""),
                              lambda: dagster_graphql_ok(public_dagster)),
        LOCAL_WEBSERVER: (settings.dagster_local_port, settings.dagster_url, lambda: dagster_graphql_ok(settings.dagster_url)),
        "dagster-daemon": (None, "-", lambda: dagster_daemon_ok(settings.dagster_url)),
        "collector": (settings.collector_port, f"{settings.collector_url}/v1/feedback",
                      lambda: http_ok(f"{settings.collector_url}/readyz")),
    }
    out: list[ServiceStatus] = []
    for name in _PID_NAMES:
        if name not in checks:
            continue  # the ingestors, below
        info = _read_pid(settings, name)
        if name == LOCAL_WEBSERVER and info is None and not settings.dagster_read_only:
            continue  # bound to loopback: the one webserver is writable
        _, address, health = checks[name]
        pid = info.get("pid") if info else None
        running = bool(info) and _alive_info(info)
        note = ""
        if info and not running:
            note = "stale pid file: the process is gone (run `lakeloop up` to restart it)"
        elif not info:
            note = "not started by lakeloop"
        healthy = running and health()
        out.append(ServiceStatus(name, pid if running else None, address, running, healthy, note))
    for name in INGEST_SERVICE_NAMES:
        info = _read_pid(settings, name)
        if info is None and not settings.autopilot:
            continue  # autopilot off and never started: nothing to report
        out.append(_ingest_status(settings, name, info))
    return out


def _child_alive(state: dict | None) -> bool:
    return bool(state) and _alive(state.get("child_pid"), "", state.get("child_proc_start"))


def ingest_healthy(settings: Settings, name: str) -> bool:
    """A continuous ingestor is healthy when its supervisor and the ingestor under it are both alive."""
    info = _read_pid(settings, name)
    return bool(info) and _alive_info(info) and _child_alive(read_state(state_file(settings, name)))


def _ingest_status(settings: Settings, name: str, info: dict | None) -> ServiceStatus:
    """Running = the supervisor lives; healthy = and so does its ingestor (not in backoff). The note tells restarts,
    the last exit and, in backoff, when the next start is due."""
    address = f"{settings.bootstrap_servers} -> {INGEST_STREAMS[name]}"
    if info is None:
        return ServiceStatus(name, None, address, False, False, "not started (autopilot is on: `lakeloop up` starts it)")
    if not _alive_info(info):
        return ServiceStatus(name, None, address, False, False,
                             "stale pid file: the supervisor is gone (run `lakeloop up` to restart it)")
    state = read_state(state_file(settings, name)) or {}
    code = state.get("last_exit_code")
    last = ""
    if code is not None and state.get("last_exit_at"):
        last = f"last exit {code} at {time.strftime('%H:%M:%S', time.localtime(state['last_exit_at']))}"
        if state.get("last_error"):
            last += f" ({state['last_error'][:160]})"
    parts = [f"restarts {state.get('restarts', 0)}"] + ([last] if last else [])
    if _child_alive(state):
        note = f"ingestor pid {state['child_pid']}; " + "; ".join(parts)
        return ServiceStatus(name, info["pid"], address, True, True, note)
    if state.get("next_restart_at"):
        wait = max(0.0, state["next_restart_at"] - time.time())
        note = f"restarting in {wait:.0f} s after exit code {code}; " + "; ".join(parts)
    else:
        note = "ingestor not running; " + "; ".join(parts)
    return ServiceStatus(name, info["pid"], address, True, False, note)


def status_dicts(settings: Settings) -> list[dict]:
    return [asdict(s) for s in status(settings)]
