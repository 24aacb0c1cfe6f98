"""Two-way lineage, read from the MLflow registry: what a registered model version learned from, how it was judged
and where it went (``model_lineage``), and which model versions learned from a gold table (``table_lineage``).

A version's lineage is its tags (copied from its training run at registration) over its run's tags, params, metrics
and config artifact (``trainers.train``); its rollout history is the promotion ledger's entries that moved an alias to
or from it (``trainers.registry``). Which versions pin which table version is ``trainers.lineage_guard``'s reading,
archived versions included. ``lakeloop lineage model|table`` prints these dataclasses (``format_*``, ``to_dict``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from infra.errors import ConfigError, DataError, ServiceError
from infra.settings import Settings
from infra.storage import storage_options
from infra.tables import spec, table_uri
from trainers import lineage_guard as G
from trainers import registry as R
from trainers.gate import BEATS_BASELINES_TAG
from trainers.tracking import CONFIG_ARTIFACT, client, needs_mlflow, server_answers, train_config

STATE_TAG = "lakeloop.rollout_state"  # = monitors.model_store.STATE_TAG (trainers never imports monitors)
HEADLINE = ("pairwise_accuracy", "auc", "log_loss", "calibration_error")  # eval.<metric> in the plain output


@dataclass(frozen=True)
class TableUse:
    """A gold table at the Delta version a model version learned from (None: not recorded)."""

    table: str
    uri: str | None
    version: int | None
    rows_digest: str | None  # order-independent digest of the train-split rows the model saw
    curation_hash: str | None  # curation's content hash of that version (``lakeloop.content_hash``)


@dataclass(frozen=True)
class AliasMove:
    """One promotion-ledger entry that moved an alias to or away from the version."""

    at: str  # ISO 8601, UTC
    alias: str
    action: str  # set | delete
    from_version: str | None
    to_version: str | None
    actor: str
    reason: str


@dataclass(frozen=True)
class GateResult:
    result: str | None  # passed | failed | None: never evaluated
    reasons: str | None
    beats_baselines: bool | None  # the baseline rule alone (None: not recorded)


@dataclass(frozen=True)
class ModelLineage:
    model: str
    version: str
    run_id: str | None
    stage: str
    archived: bool
    aliases: tuple[str, ...]
    rollout_state: str | None
    family: str | None  # the candidate family that won the run's selection
    git_commit: str | None
    tables: tuple[TableUse, ...]
    gate: GateResult
    metrics: dict[str, float | None]  # the run's metrics: eval.*, baseline.*, paired.*, val.*, train_*
    config: dict[str, Any] | None  # the training config artifact (None: not logged; see params)
    config_uri: str | None
    params: dict[str, str]
    history: tuple[AliasMove, ...]  # oldest first
    erasures: tuple[str, ...] = ()  # `lakeloop forget` runs whose user's rows its pinned versions held

    @property
    def contains_erased_data(self) -> bool:
        return bool(self.erasures)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "contains_erased_data": self.contains_erased_data}


@dataclass(frozen=True)
class Learner:
    """A registered model version that learned from a table version."""

    model: str
    version: str
    table_version: int
    stage: str
    archived: bool
    aliases: tuple[str, ...]
    run_id: str | None
    erasures: tuple[str, ...] = ()  # the version contains erased data (its pinned versions held an erased user's rows)


@dataclass(frozen=True)
class TableLineage:
    table: str
    uri: str
    version: int | None  # the table version asked about (None: all)
    latest: int | None  # the table's current Delta version (None: not in this lake)
    models: tuple[Learner, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- model -> data ---------------------------------------------------------------------------------------
def model_lineage(settings: Settings, ref: str, *, model_name: str | None = None) -> ModelLineage:
    """The lineage of a registered model version; ``ref`` is a version number or an alias (champion, ...)."""
    name = model_name or settings.registered_model_name
    ref = ref.strip().lower()
    if not ref.isdigit() and ref not in R.ALIASES:
        raise ConfigError(f"{ref!r} is neither a model version nor an alias",
                          hint=f"give a version number (`lakeloop lineage model 3`) or one of: {', '.join(R.ALIASES)}")
    _probe(settings, f"the lineage of {name} {'v' + ref if ref.isdigit() else '@' + ref}")
    return _model_lineage(settings, ref, name)


@needs_mlflow("reading a model version's lineage")
def _model_lineage(settings: Settings, ref: str, name: str) -> ModelLineage:
    from mlflow.exceptions import MlflowException

    c = client(settings)
    version = _resolve(c, settings, name, ref)
    try:
        mv = c.get_model_version(name, version)
    except MlflowException as exc:
        if not _not_found(exc):
            raise
        raise _missing(settings, c, name, version) from None
    run_tags: dict[str, str] = {}
    params: dict[str, str] = {}
    metrics: dict[str, float | None] = {}
    config = None
    if mv.run_id:
        try:
            run = c.get_run(mv.run_id)
            run_tags, params = dict(run.data.tags), dict(run.data.params)
            metrics = {k: (float(v) if math.isfinite(v) else None) for k, v in run.data.metrics.items()}
            config = train_config(c, mv.run_id)
        except MlflowException as exc:
            if not _not_found(exc):
                raise  # a deleted run leaves only the version's own tags
    tags = {**run_tags, **dict(mv.tags or {})}  # the version's copy wins, as in trainers.lineage_guard
    beats = tags.get(BEATS_BASELINES_TAG)
    stage = str(mv.current_stage or "None")
    return ModelLineage(
        model=name, version=str(mv.version), run_id=mv.run_id or None, stage=stage, archived=stage.lower() == "archived",
        aliases=tuple(sorted(getattr(mv, "aliases", None) or ())), rollout_state=tags.get(STATE_TAG),
        family=tags.get("lakeloop.candidate.family"), git_commit=tags.get("lakeloop.git_commit"),
        tables=tuple(_table_use(table, prefix, tags) for table, prefix in G.PIN_TABLES.items()),
        gate=GateResult(tags.get("lakeloop.gate"), tags.get("lakeloop.gate.reasons"), None if beats is None else beats == "true"),
        metrics=dict(sorted(metrics.items())), config=config,
        config_uri=f"runs:/{mv.run_id}/{CONFIG_ARTIFACT}" if config is not None else None,
        params=dict(sorted(params.items())), history=_history(settings, name, str(mv.version)),
        erasures=G.erasures_of(dict(mv.tags or {})),
    )


def _table_use(table: str, prefix: str, tags: dict[str, str]) -> TableUse:
    version = tags.get(f"{prefix}.version", "")
    known = lambda key: None if tags.get(key) in (None, "", "none") else tags[key]
    return TableUse(table, known(f"{prefix}.uri"), int(version) if version.isdigit() else None,
                    known(f"{prefix}.rows_digest"), known(f"{prefix}.curation_hash"))


def _history(settings: Settings, name: str, version: str) -> tuple[AliasMove, ...]:
    """The promotion ledger's entries that moved an alias of ``name`` to or from ``version`` (read only)."""
    from deltalake import DeltaTable

    if not DeltaTable.is_deltatable(table_uri(settings, R.LEDGER), storage_options=storage_options(settings)):
        return ()  # no alias has moved in this lake yet (``ledger_entries`` would create the table)
    df = R.ledger_entries(settings)
    df = df[(df["model_name"] == name) & ((df["to_version"] == version) | (df["from_version"] == version))]
    return tuple(AliasMove(r.at.isoformat(), r.alias, r.action, r.from_version, r.to_version, r.actor, r.reason)
                 for r in df.itertuples(index=False))


def _resolve(c: Any, settings: Settings, name: str, ref: str) -> str:
    from mlflow.exceptions import MlflowException

    if ref.isdigit():
        return str(int(ref))
    try:
        return str(c.get_model_version_by_alias(name, ref).version)
    except MlflowException as exc:
        if not _not_found(exc):
            raise
        raise _no_model(settings, c, name) or DataError(
            f"{name} has no {ref} alias now",
            hint=f"`lakeloop aliases` shows where the aliases point; or give a version number (`lakeloop lineage model 3 --name {name}`)") from None


def _no_model(settings: Settings, c: Any, name: str) -> DataError | None:
    """The error to raise when ``name`` is not a registered model (with the names there are), else None."""
    from mlflow.exceptions import MlflowException

    try:
        c.get_registered_model(name)
        return None
    except MlflowException as exc:
        if not _not_found(exc):
            raise
    names = sorted(m.name for m in c.search_registered_models(max_results=100))
    return DataError(f"no registered model {name!r} on {settings.tracking_uri}",
                     hint=f"pass --name with one of: {', '.join(names)}" if names else
                     "no model is registered yet: the Dagster `training` group (or `lakeloop register-model RUN_ID`) registers one")


def _missing(settings: Settings, c: Any, name: str, version: str) -> DataError:
    """Why ``name`` v``version`` was not found, with the versions (or models) there are."""
    if (err := _no_model(settings, c, name)) is not None:
        return err
    versions = sorted(int(mv.version) for mv in c.search_model_versions(f"name='{name}'"))
    return DataError(f"{name} has no version {version}",
                     hint=f"its versions: {_span(versions)}; e.g. `lakeloop lineage model {versions[-1]} --name {name}`" if versions else f"{name} has no versions yet")


# ---- data -> models --------------------------------------------------------------------------------------
def gold_table(name: str) -> str:
    """The gold table a name means (``training_examples`` or ``gold/training_examples``); ConfigError otherwise."""
    full = name.strip().strip("/")
    full = full if "/" in full else f"gold/{full}"
    if full in G.PIN_TABLES:
        return full
    try:
        spec(full)
        what = f"models do not learn from {full} directly"
    except KeyError:
        what = f"unknown table {name!r}"
    raise ConfigError(f"{what}: models learn from {' and '.join(G.PIN_TABLES)}",
                      hint="`lakeloop lineage table gold/training_examples` (or preference_pairs); `lakeloop tables` lists every table")


def table_lineage(settings: Settings, table: str, *, version: int | None = None) -> TableLineage:
    """The registered model versions (every model on the server, archived ones too) that learned from ``table`` of
    this lake, or from exactly its ``version``."""
    name = gold_table(table)
    uri = table_uri(settings, name)
    latest = _latest(uri, storage_options=storage_options(settings))
    if version is not None and (version < 0 or (latest is not None and version > latest)):
        raise DataError(f"{name} has no version {version}" + (f" (latest: v{latest})" if latest is not None else ""),
                        hint=(f"its versions run 0..{latest}; " if latest is not None else "") + "leave out --version to see every "
                        "version models learned from")
    _probe(settings, f"which model versions learned from {name}")
    return _table_lineage(settings, name, uri, version, latest)


@needs_mlflow("reading which model versions learned from a table")
def _table_lineage(settings: Settings, name: str, uri: str, version: int | None, latest: int | None) -> TableLineage:
    found = [(mv, p) for mv in G.registered_versions(settings) for p in mv.pins
             if G.same_table(p.uri, uri) and (version is None or p.version == version)]
    c = client(settings)
    aliases: dict[str, dict[str, list[str]]] = {}
    for model in sorted({mv.name for mv, _ in found}):
        by_version: dict[str, list[str]] = {}
        for alias, v in (c.get_registered_model(model).aliases or {}).items():
            by_version.setdefault(str(v), []).append(alias)
        aliases[model] = by_version
    learners = [Learner(mv.name, mv.version, p.version, mv.stage, mv.archived, tuple(sorted(aliases[mv.name].get(mv.version, []))), mv.run_id,
                        mv.erasures)
                for mv, p in found]
    learners.sort(key=lambda x: (x.model, int(x.version) if x.version.isdigit() else 0))
    return TableLineage(name, uri, version, latest, tuple(learners))


def _latest(uri: str, *, storage_options: dict[str, str] | None = None) -> int | None:
    from deltalake import DeltaTable

    return DeltaTable(uri, storage_options=storage_options).version() if DeltaTable.is_deltatable(uri, storage_options=storage_options) else None


# ---- shared ----------------------------------------------------------------------------------------------
def _probe(settings: Settings, what: str) -> None:
    if not server_answers(settings.tracking_uri):
        raise ServiceError(f"MLflow at {settings.tracking_uri} does not answer; it records {what}",
                           hint="start it with `lakeloop up` (`lakeloop status` shows what is down), or point "
                           "LAKELOOP_MLFLOW_TRACKING_URI at the running server")


def _not_found(exc: Exception) -> bool:
    code = str(getattr(exc, "error_code", "") or "")  # INVALID_PARAMETER_VALUE: e.g. a version number out of range
    return "RESOURCE_DOES_NOT_EXIST" in code or "INVALID_PARAMETER_VALUE" in code or "not found" in str(exc).lower() or "does not exist" in str(exc).lower()


def _span(numbers: list[int]) -> str:
    """[1, 2, 3, 5] -> '1-3, 5'."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in runs)


def _short(text: str | None, width: int) -> str:
    if not text:
        return "-"
    return text if len(text) <= width else text[: width - 1] + "…"


# ---- plain text --------------------------------------------------------------------------------------------
def format_model(m: ModelLineage) -> str:
    """A short, aligned report; ``--json`` has everything (all metrics, params, the whole config, full digests)."""
    state = [", ".join(m.aliases) or "no alias"] + ([f"stage {m.stage}"] if m.stage != "None" else [])
    state += [f"rollout state {m.rollout_state}"] if m.rollout_state else []
    lines = [f"{m.model} v{m.version}  ({'; '.join(state)})",
             f"  run          {m.run_id or '- (registered without a run)'}",
             f"  family       {m.family or '-'}",
             f"  git commit   {m.git_commit or '-'}"]
    beats = {True: "yes", False: "no", None: "not recorded"}[m.gate.beats_baselines]
    lines += [f"  gate         {m.gate.result or 'not evaluated'} (beats baselines: {beats})",
              f"  gate reasons {_short(m.gate.reasons, 160)}", "data (pinned Delta versions)"]
    if m.contains_erased_data:
        lines.append(f"  contains erased data ({', '.join(m.erasures)}): its pinned versions held rows `lakeloop forget` has "
                     "since deleted; they stop reading once the erasure's vacuum deletes their files (erasure wins over lineage)")
    width = max(len(t.table) for t in m.tables)
    for t in m.tables:
        v = f"v{t.version}" if t.version is not None else "v?"
        lines.append(f"  {t.table:<{width}}  {v:<5} rows {_short(t.rows_digest, 13):<13}  curation {_short(t.curation_hash, 13):<13}  {t.uri or '-'}")
    shown = [(k, m.metrics.get(f"eval.{k}"), m.metrics.get(f"eval.{k}.lo"), m.metrics.get(f"eval.{k}.hi")) for k in HEADLINE]
    shown = [s for s in shown if s[1] is not None]
    lines.append("eval metrics (95% interval)" if shown else "eval metrics: none recorded")
    for k, v, lo, hi in shown:
        ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""
        lines.append(f"  {k:<18} {v:.3f}{ci}")
    if m.config is not None:
        keys = ("candidates", "seed", "examples_version", "pairs_version")
        brief = " ".join(f"{k}={','.join(map(str, m.config[k])) if isinstance(m.config[k], list) else m.config[k]}" for k in keys if k in m.config)
        lines.append(f"config       {m.config_uri} ({brief})")
    else:
        lines.append(f"config       {'run params only (' + str(len(m.params)) + ')' if m.params else 'not recorded'}")
    lines.append("rollout (promotion ledger)" if m.history else "rollout: no alias has moved to or from this version")
    for h in m.history:
        lines.append(f"  {h.at[:19].replace('T', ' ')}  {h.alias:<10} {h.from_version or '-':>3} -> {h.to_version or '-':<3}  "
                     f"{h.actor}: {_short(h.reason, 80)}")
    return "\n".join(lines)


def format_table(t: TableLineage) -> str:
    at = f" v{t.version}" if t.version is not None else ""
    latest = f"latest v{t.latest}" if t.latest is not None else "not in this lake"
    if not t.models:
        return f"{t.table}{at} ({latest}, {t.uri}): no registered model version learned from it"
    lines = [f"{t.table}{at} ({latest}, {t.uri}): {len(t.models)} model version(s) learned from it"]
    width = max(len(f"{x.model} v{x.version}") for x in t.models)
    for x in t.models:
        status = "archived" if x.archived else "registered"
        erased = f"  contains erased data ({', '.join(x.erasures)})" if x.erasures else ""
        lines.append(f"  {f'{x.model} v{x.version}':<{width}}  table v{x.table_version:<4} {status:<10}  {', '.join(x.aliases) or '-'}{erased}")
    return "\n".join(lines)
