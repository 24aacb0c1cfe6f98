"""The MLflow model registry, and THE one module that changes aliases.

MLflow's ``set_registered_model_alias`` is last-writer-wins, so every alias change here is a
compare-and-set serialised through the promotion ledger (Delta table ``registry/promotion_ledger``):

1. read the ledger at its current Delta version V (one ``DeltaTable`` object);
2. the alias's current value is the ledger's latest entry for it (MLflow's value if the ledger has none);
   if it differs from ``expected_version`` -> ``AliasConflictError``;
3. append the change to the ledger through that same object with ``max_commit_retries=0``: the commit must
   land exactly at V+1 (an atomic put-if-absent of the log file), so of racing promoters exactly one
   commits and the rest get ``AliasConflictError``;
4. only the winner calls MLflow, then reads the alias back and verifies it.

A change made outside lakeloop (a person in the MLflow UI) is appended afterwards with actor ``external``
(``ledger_heads`` + ``record_external``, driven by ``monitors.overrides.detect_external_changes``), under the
same rule: the commit lands at exactly the ledger version that was compared, or not at all.

Registrations are ledgered too (alias column ``registration``, action ``register``): the SHA-256 of the version's
artifact files (``artifact_digest``), recorded when a gate-passed run is registered or an operator overrides the gate
(``record_registration``). What serves, replays or scores a version loads it only if this entry exists and the digest
of the downloaded files matches it (``trainers.model_trust``): MLflow's own tags can be written by anyone who can
write to MLflow; the ledger lives in the lake.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from infra.errors import CommitConflictError, ServiceError
from infra.settings import Settings
from infra.storage import storage_options
from infra.tables import table_uri
from trainers.tracking import needs_mlflow, single_attempt, unreachable_error

LEDGER = "registry/promotion_ledger"
ALIASES = ("champion", "challenger", "canary")
REGISTRATION = "registration"  # the ledger's ``alias`` column of a version's registration entry (not an alias)
DIGEST_TAG = "lakeloop.artifact_sha256"  # model-version tag: the digest recorded at registration (the ledger is the authority)
NOT_ARTIFACTS = frozenset({"registered_model_meta"})  # written by MLflow into a models:/ download, not logged
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".pt", ".pth", ".ckpt", ".bin")
LEDGER_SCHEMA = pa.schema([
    ("at", pa.timestamp("us", tz="UTC")), ("model_name", pa.string()), ("alias", pa.string()),
    ("action", pa.string()), ("from_version", pa.string()), ("to_version", pa.string()),
    ("actor", pa.string()), ("reason", pa.string()), ("metrics", pa.string()), ("ledger_read_version", pa.int64()),
])


class AliasConflictError(CommitConflictError):
    """The alias is not at the expected version any more, or another promoter won the race."""


@dataclass(frozen=True)
class AliasChange:
    model_name: str
    alias: str
    from_version: str | None
    to_version: str | None
    ledger_version: int


def _client(settings: Settings) -> Any:
    from trainers.tracking import client

    return client(settings)


def _name(settings: Settings, model_name: str | None) -> str:
    return model_name or settings.registered_model_name


def get_alias_version(settings: Settings, alias: str, *, model_name: str | None = None) -> str | None:
    """The version an alias points at in MLflow, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return str(_client(settings).get_model_version_by_alias(_name(settings, model_name), alias).version)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or "not found" in str(exc).lower() or "does not exist" in str(exc).lower():
            return None
        down = unreachable_error(settings, f"reading alias {alias!r}", exc)
        if down is not None:
            raise down from exc
        raise ServiceError(f"cannot read alias {alias!r}: {exc}", hint="is the MLflow server up? `lakeloop status`") from exc


def _ledger(settings: Settings) -> Any:
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError, TableNotFoundError

    uri, opts = table_uri(settings, LEDGER), storage_options(settings)
    for _ in range(5):
        try:
            return DeltaTable(uri, storage_options=opts)
        except TableNotFoundError:
            try:
                DeltaTable.create(uri, LEDGER_SCHEMA, mode="ignore", name="promotion_ledger", storage_options=opts)
            except DeltaError:
                time.sleep(0.05)  # another promoter created it at the same moment
    return DeltaTable(uri, storage_options=opts)


def ledger_entries(settings: Settings, *, include_registrations: bool = False) -> Any:
    """The ledger's alias moves as a pandas DataFrame (oldest first); ``include_registrations``: the registration
    entries (alias column ``REGISTRATION``) too."""
    df = _ledger(settings).to_pyarrow_table().to_pandas()
    if not include_registrations:
        df = df[df["alias"] != REGISTRATION]
    return df.sort_values("at").reset_index(drop=True)


def _ledger_current(dt: Any, model_name: str, alias: str) -> tuple[bool, str | None]:
    import pyarrow.compute as pc

    t = dt.to_pyarrow_table(columns=["at", "model_name", "alias", "to_version", "ledger_read_version"])
    t = t.filter(pc.and_(pc.equal(t["model_name"], model_name), pc.equal(t["alias"], alias)))
    if t.num_rows == 0:
        return False, None
    last = t.sort_by([("ledger_read_version", "descending")]).slice(0, 1).to_pylist()[0]
    return True, last["to_version"]


@needs_mlflow("moving an alias")
def _change(settings: Settings, alias: str, expected: str | None, new: str | None, *, actor: str, reason: str,
            metrics: dict[str, float] | None, model_name: str | None) -> AliasChange:
    from deltalake import CommitProperties, write_deltalake
    from deltalake.exceptions import CommitFailedError

    if alias not in ALIASES:
        raise ValueError(f"unknown alias {alias!r}; lakeloop uses {ALIASES}")
    name = _name(settings, model_name)
    expected = None if expected is None else str(expected)
    new = None if new is None else str(new)
    dt = _ledger(settings)
    read_version = dt.version()
    known, current = _ledger_current(dt, name, alias)
    if not known:
        current = get_alias_version(settings, alias, model_name=name)
    if current != expected:
        raise AliasConflictError(f"alias {name}@{alias} is at {current}, not the expected {expected}", hint="re-read the alias and decide again")
    row = pa.Table.from_pylist([{
        "at": datetime.now(UTC), "model_name": name, "alias": alias, "action": "set" if new else "delete",
        "from_version": current, "to_version": new, "actor": actor, "reason": reason,
        "metrics": json.dumps(metrics or {}, sort_keys=True, default=str), "ledger_read_version": read_version,
    }], schema=LEDGER_SCHEMA)
    try:
        write_deltalake(dt, row, mode="append", commit_properties=CommitProperties(max_commit_retries=0, custom_metadata={"lakeloop.alias": f"{name}@{alias}"}))
    except CommitFailedError:
        raise AliasConflictError(f"another promoter changed the ledger first while moving {name}@{alias}", hint="re-read the alias and decide again") from None
    client = _client(settings)
    if new is None:
        client.delete_registered_model_alias(name, alias)
    else:
        client.set_registered_model_alias(name, alias, new)
    seen = get_alias_version(settings, alias, model_name=name)
    if seen != new:
        raise ServiceError(f"alias {name}@{alias} reads {seen} right after setting it to {new}: a writer bypassed trainers.registry",
                           hint="only trainers.registry may change aliases; run reconcile_alias() to restore the ledger's value")
    return AliasChange(name, alias, current, new, read_version + 1)


def set_alias_cas(settings: Settings, alias: str, expected_version: str | int | None, new_version: str | int, *, actor: str,
                  reason: str, metrics: dict[str, float] | None = None, model_name: str | None = None) -> AliasChange:
    """Point ``alias`` at ``new_version`` if it is at ``expected_version`` now (None = unset); one ledger entry."""
    return _change(settings, alias, None if expected_version is None else str(expected_version), str(new_version),
                   actor=actor, reason=reason, metrics=metrics, model_name=model_name)


def delete_alias_cas(settings: Settings, alias: str, expected_version: str | int, *, actor: str, reason: str,
                     metrics: dict[str, float] | None = None, model_name: str | None = None) -> AliasChange:
    """Remove ``alias`` if it is at ``expected_version`` now; one ledger entry."""
    return _change(settings, alias, str(expected_version), None, actor=actor, reason=reason, metrics=metrics, model_name=model_name)


@needs_mlflow("reconciling an alias with the ledger")
def reconcile_alias(settings: Settings, alias: str, *, model_name: str | None = None) -> str | None:
    """Make MLflow agree with the ledger's latest entry (after a promoter died between the two steps).

    This undoes an alias change a person made by hand in MLflow; the autopilot does the opposite and records
    such changes (``monitors.overrides.detect_external_changes``). Use it by hand, knowing which one happened."""
    name = _name(settings, model_name)
    known, value = _ledger_current(_ledger(settings), name, alias)
    if known and get_alias_version(settings, alias, model_name=name) != value:
        client = _client(settings)
        client.delete_registered_model_alias(name, alias) if value is None else client.set_registered_model_alias(name, alias, value)
    return value


# ---- changes lakeloop did not make ---------------------------------------------------------------------
@dataclass(frozen=True)
class LedgerHead:
    """The ledger's latest entry for one alias: where lakeloop last recorded it."""

    alias: str
    from_version: str | None
    to_version: str | None
    at: datetime
    actor: str
    action: str


@dataclass(frozen=True)
class ExternalEntry:
    """One alias change seen in MLflow that the ledger does not have, to record with ``record_external``."""

    alias: str
    ledger_value: str | None  # the ledger's latest value for the alias (None: unset, or never recorded)
    mlflow_value: str | None  # what MLflow shows now
    reason: str
    details: dict[str, str]  # what MLflow told about it (stored as JSON in the ``metrics`` column)


def ledger_heads(settings: Settings, *, model_name: str | None = None) -> tuple[int, dict[str, LedgerHead]]:
    """(the ledger's Delta version read, alias -> its latest entry) for the aliases the ledger has entries for."""
    import pyarrow.compute as pc

    name = _name(settings, model_name)
    dt = _ledger(settings)
    t = dt.to_pyarrow_table(columns=["at", "model_name", "alias", "action", "from_version", "to_version", "actor", "ledger_read_version"])
    t = t.filter(pc.equal(t["model_name"], name)).sort_by([("ledger_read_version", "ascending")])
    heads = {r["alias"]: LedgerHead(r["alias"], r["from_version"], r["to_version"], r["at"], r["actor"], r["action"]) for r in t.to_pylist()
             if r["alias"] in ALIASES}  # not the registration entries
    return dt.version(), heads


def record_external(settings: Settings, entries: list[ExternalEntry], *, ledger_version: int, model_name: str | None = None) -> int:
    """Append alias changes made outside lakeloop (a person in the MLflow UI or API) to the ledger, actor
    ``external``, in one commit; MLflow is not touched (it already shows them). -> the new ledger version.

    Compare-and-set like ``set_alias_cas``: ``ledger_version`` is the ledger version the caller compared MLflow
    against (``ledger_heads``); the commit must land exactly at ``ledger_version + 1``, so if a promoter (or
    another detector) wrote the ledger meanwhile -> ``AliasConflictError`` and nothing is recorded: read again.
    Afterwards the ledger's value of each alias is MLflow's, so compare-and-set callers expect that value."""
    from deltalake import CommitProperties, write_deltalake
    from deltalake.exceptions import CommitFailedError

    name = _name(settings, model_name)
    if not entries:
        return ledger_version
    if bad := [e.alias for e in entries if e.alias not in ALIASES]:
        raise ValueError(f"unknown aliases {bad}; lakeloop uses {ALIASES}")
    dt = _ledger(settings)
    if dt.version() != ledger_version:
        raise AliasConflictError(f"the promotion ledger moved from version {ledger_version} to {dt.version()} while comparing it with MLflow",
                                 hint="compare again")
    now = datetime.now(UTC)
    rows = pa.Table.from_pylist([{
        "at": now, "model_name": name, "alias": e.alias, "action": "set" if e.mlflow_value else "delete",
        "from_version": e.ledger_value, "to_version": e.mlflow_value, "actor": "external", "reason": e.reason,
        "metrics": json.dumps(e.details, sort_keys=True, default=str), "ledger_read_version": ledger_version,
    } for e in entries], schema=LEDGER_SCHEMA)
    try:
        write_deltalake(dt, rows, mode="append", commit_properties=CommitProperties(
            max_commit_retries=0, custom_metadata={"lakeloop.alias": ",".join(f"{name}@{e.alias}" for e in entries), "lakeloop.actor": "external"}))
    except CommitFailedError:
        raise AliasConflictError(f"another writer changed the ledger first while recording external changes of {name}", hint="compare again") from None
    return ledger_version + 1


# ---- model versions -----------------------------------------------------------------------------------
@needs_mlflow("registering a model version")
def register_version(settings: Settings, *, run_id: str, model_uri: str, tags: dict[str, str], model_name: str | None = None,
                     actor: str = "trainers.registry") -> tuple[str, bool]:
    """The registry version of this run's model: created once, found again on a retry. -> (version, created).

    Idempotent on the run: a version whose ``run_id`` is this run is returned, not made again. The create is sent
    once (``single_attempt``): MLflow's client would resend it when the answer is lost, and the server would make
    a second version; after a failed create, a version that landed anyway is looked up and returned.

    A version whose tags say the gate passed (``lakeloop.gate=passed``) or an operator overrode it
    (``lakeloop.override``) gets its artifact digest recorded in the ledger (``record_registration``): only such a
    version loads anywhere."""
    version, created = _register(settings, run_id=run_id, model_uri=model_uri, tags=tags, model_name=model_name)
    gate = "passed" if tags.get("lakeloop.gate") == "passed" else "override" if tags.get("lakeloop.override") else None
    if gate is not None:
        why = f"gate passed for run {run_id}" if gate == "passed" else f"gate overridden: {tags['lakeloop.override']}"
        record_registration(settings, version, actor=actor, reason=why, gate=gate, model_name=model_name)
    return version, created


def _register(settings: Settings, *, run_id: str, model_uri: str, tags: dict[str, str], model_name: str | None) -> tuple[str, bool]:
    import requests
    from mlflow.exceptions import MlflowException

    client = _client(settings)
    name = _name(settings, model_name)
    try:
        client.create_registered_model(name, description="lakeloop reward model: predict(DataFrame[prompt, response]) -> score in [0,1]")
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
    existing = _run_versions(client, name, run_id)
    if existing:
        return existing[0], False
    model_id = model_uri.split("/", 1)[1] if model_uri.startswith("models:/m-") else None  # an MLflow 3 LoggedModel
    try:
        with single_attempt():
            mv = client.create_model_version(name, source=model_uri, run_id=run_id, tags={k: str(v) for k, v in tags.items()}, model_id=model_id)
    except (MlflowException, requests.RequestException):
        landed = _run_versions(client, name, run_id)  # the server may have made it and lost only the answer
        if landed:
            return landed[0], True
        raise
    return str(mv.version), True


# ---- what a version's artifacts are: the digest recorded at registration --------------------------------
def artifact_files(folder: Path) -> list[str]:
    """The model's files under ``folder`` as sorted POSIX relative paths (MLflow's download marker left out)."""
    return sorted(p.relative_to(folder).as_posix() for p in Path(folder).rglob("*") if p.is_file() and p.name not in NOT_ARTIFACTS)


def artifact_digest(folder: Path) -> str:
    """SHA-256 over the model's files, sorted by relative path: each contributes its path and its own SHA-256."""
    outer = hashlib.sha256()
    for rel in artifact_files(folder):
        inner = hashlib.sha256()
        with (Path(folder) / rel).open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                inner.update(block)
        outer.update(f"{rel}\0{inner.hexdigest()}\n".encode())
    return outer.hexdigest()


def pickle_files(folder: Path) -> list[str]:
    """Files under ``folder`` that are (or hold) pickles: by suffix, by the pickle protocol's first byte, or a zip
    with a ``data.pkl`` (torch.save's format)."""
    import zipfile

    found = []
    for rel in artifact_files(folder):
        path = Path(folder) / rel
        with path.open("rb") as f:
            head = f.read(8)
            if rel.endswith(".safetensors"):  # 8 bytes of header length, then a JSON header: anything else is suspect
                try:
                    json.loads(f.read(int.from_bytes(head, "little")))
                    continue
                except (ValueError, MemoryError, OverflowError):
                    found.append(rel)
                    continue
        zipped = head[:2] == b"PK" and zipfile.is_zipfile(path) and any(n.endswith(".pkl") for n in zipfile.ZipFile(path).namelist())
        if rel.endswith(PICKLE_SUFFIXES) or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")) or zipped:
            found.append(rel)
    return found


def download_version(settings: Settings, version: str, dest: Path, *, model_name: str | None = None) -> Path:
    """The version's model files, downloaded into ``dest``; -> the model folder (the one holding MLmodel)."""
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{_name(settings, model_name)}/{version}", dst_path=str(dest)))


@dataclass(frozen=True)
class Registration:
    """A version's latest registration entry in the ledger."""

    version: str
    digest: str
    gate: str  # passed | override
    actor: str
    at: datetime


def registration(settings: Settings, version: str | int, *, model_name: str | None = None) -> Registration | None:
    """The ledger's latest registration entry for ``version`` (None: the ledger does not know it)."""
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    if not DeltaTable.is_deltatable(table_uri(settings, LEDGER)):
        return None
    t = _ledger(settings).to_pyarrow_table(columns=["at", "model_name", "alias", "action", "to_version", "actor", "metrics", "ledger_read_version"])
    t = t.filter(pc.and_(pc.and_(pc.equal(t["model_name"], _name(settings, model_name)), pc.equal(t["alias"], REGISTRATION)),
                         pc.equal(t["to_version"], str(version))))
    if t.num_rows == 0:
        return None
    row = t.sort_by([("at", "descending")]).slice(0, 1).to_pylist()[0]
    meta = json.loads(row["metrics"] or "{}")
    return Registration(str(version), str(meta.get("sha256", "")), str(meta.get("gate", "")), row["actor"], row["at"])


def record_registration(settings: Settings, version: str | int, *, actor: str, reason: str, gate: Literal["passed", "override"],
                        model_name: str | None = None, allow_pickle: bool = False) -> str:
    """Download the version's files, compute their digest and append a registration entry to the ledger (and the
    digest as version tag ``DIGEST_TAG``, for people); -> the digest. Idempotent: an entry with the same digest is not
    written again. A model that holds pickles is refused unless ``allow_pickle`` (tests of the monitors only)."""
    import tempfile

    from infra.errors import DataError
    from deltalake import write_deltalake

    name, version = _name(settings, model_name), str(version)
    with tempfile.TemporaryDirectory(prefix="lakeloop-register-") as tmp:
        folder = download_version(settings, version, Path(tmp), model_name=name)
        digest = artifact_digest(folder)
        pickles = pickle_files(folder)
    if pickles and not allow_pickle:
        raise DataError(f"{name} v{version} holds pickled files {pickles[:5]}: lakeloop does not register models that load by unpickling",
                        hint="log the model as models-from-code with plain-tensor weights (trainers.pyfunc), i.e. retrain it")
    known = registration(settings, version, model_name=name)
    if known is None or known.digest != digest:
        row = pa.Table.from_pylist([{
            "at": datetime.now(UTC), "model_name": name, "alias": REGISTRATION, "action": "register", "from_version": None,
            "to_version": version, "actor": actor, "reason": f"{reason}; artifacts sha256 {digest}",
            "metrics": json.dumps({"sha256": digest, "gate": gate}, sort_keys=True), "ledger_read_version": _ledger(settings).version(),
        }], schema=LEDGER_SCHEMA)
        write_deltalake(_ledger(settings), row, mode="append")
    _client(settings).set_model_version_tag(name, version, DIGEST_TAG, digest)
    return digest


def _run_versions(client: Any, name: str, run_id: str) -> list[str]:
    """The versions of ``name`` made from ``run_id``, lowest first."""
    return [str(v) for v in sorted(int(mv.version) for mv in client.search_model_versions(f"name='{name}' and run_id='{run_id}'"))]


DESCRIPTION_LIMIT = 5000  # MLflow's model_versions.description column is String(5000): a longer one fails on MySQL / Postgres


def fit_description(text: str, *, more: str, limit: int = DESCRIPTION_LIMIT) -> str:
    """``text`` whole when it fits in ``limit`` characters; else cut at a line end, with a last line that says it was
    cut and ``more`` (where the whole text is)."""
    if len(text) <= limit:
        return text
    tail = f"\n\n*Cut to fit MLflow's {limit}-character description; {more}*\n"
    if len(tail) >= limit:
        raise ValueError(f"the note on where the rest is ({len(tail)} characters) does not fit in {limit}")
    head = text[: limit - len(tail)]
    return head[: head.rfind("\n")].rstrip() + tail if "\n" in head else head + tail


@needs_mlflow("describing a model version")
def describe_version(settings: Settings, version: str, description: str, *, model_name: str | None = None) -> None:
    """Set a model version's description (markdown, shown on its page in the MLflow UI); at most ``DESCRIPTION_LIMIT``."""
    if len(description) > DESCRIPTION_LIMIT:
        raise ValueError(f"a model version description holds at most {DESCRIPTION_LIMIT} characters, got {len(description)}: fit_description it")
    _client(settings).update_model_version(_name(settings, model_name), str(version), description=description)


@needs_mlflow("reading a model version")
def version_info(settings: Settings, version: str, *, model_name: str | None = None) -> Any:
    return _client(settings).get_model_version(_name(settings, model_name), str(version))


def load_scorer(model_uri: str) -> Any:
    """A ``(prompts, responses) -> scores`` callable over a run's logged pyfunc (a candidate, not yet registered):
    downloaded, refused if it holds pickles, loaded from the downloaded copy. A registered version (the champion)
    loads through ``trainers.model_trust.load_trusted`` instead, then ``as_scorer``."""
    import tempfile

    import mlflow

    from infra.errors import DataError

    with tempfile.TemporaryDirectory(prefix="lakeloop-candidate-") as tmp:
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp))
        if pickles := pickle_files(folder):
            raise DataError(f"the model {model_uri} holds pickled files {pickles[:5]}: lakeloop does not load models by unpickling",
                            hint="log it as models-from-code with plain-tensor weights (trainers.pyfunc), i.e. retrain it")
        return as_scorer(mlflow.pyfunc.load_model(str(folder)))


def as_scorer(model: Any) -> Any:
    """A ``(prompts, responses) -> scores`` callable over a loaded pyfunc."""
    import numpy as np
    import pandas as pd

    return lambda p, r: np.asarray(model.predict(pd.DataFrame({"prompt": p, "response": r}))["score"], dtype=float)
