"""Asset checks of the two gold tables, in one step per table (each step loads the table once):
schema contract, no PII, no train/eval leakage, enough rows (blocking) and the duplicate rate (warning)."""

import dagster as dg
import polars as pl

from features import lake
from features.checks import (
    CheckOutcome,
    duplicate_rate,
    min_training_rows,
    no_pii_left,
    schema_contract,
    split_leakage,
)
from features.labels import doc_text
from features.pii import Redactor
from features.schema import GOLD
from infra.storage import storage_options
from infra.tables import table_uri
from orchestration.assets.curation.common import checked_rows
from orchestration.assets.curation.resources import CurationResource
from orchestration.resources import LakeloopSettings

TRAINING_TABLES = ("gold/training_examples", "gold/preference_pairs")  # what a training run reads, together
BLOCKING = {
    "schema_contract": "matches the contract of the team brief",
    "no_pii": "holds no PII (scanned with the redaction detectors)",
    "no_split_leakage": "has no prompt, or near-duplicate prompt pair, on both sides of train/eval",
    "min_rows": "and the other gold table hold at least `min_training_rows` rows for training together (examples + pairs: "
                "a preference-only or thumbs-only stream counts what it sends)",
}


def whole_table(lakeloop: LakeloopSettings, table: str) -> pl.DataFrame:
    """Every row of a gold table (leakage and duplicates are properties of the whole dataset version)."""
    settings = lakeloop.load()
    df = lake.read(table_uri(settings, table), storage_options=storage_options(settings))
    if df is None:
        empty = pl.from_arrow(GOLD[table][0].empty_table())
        assert isinstance(empty, pl.DataFrame)
        return empty
    return df


def _result(name: str, out: CheckOutcome, severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR,
            where: dict[str, object] | None = None) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(check_name=name, passed=out.passed, description=out.description,
                               metadata={**out.metadata, **(where or {})}, severity=severity)


def gold_checks(asset: str, table: str, kind: str) -> dg.AssetChecksDefinition:
    schema, _ = GOLD[table]
    texts = tuple(c for c in ("prompt", "response", "chosen", "rejected") if c in schema.names)
    specs = [dg.AssetCheckSpec(name, asset=asset, blocking=True, description=f"{table} {what}.") for name, what in BLOCKING.items()]
    specs.append(dg.AssetCheckSpec("duplicate_rate", asset=asset, blocking=False,
                                   description=f"Share of {table} rows with a near duplicate in the table (warning)."))

    @dg.multi_asset_check(specs=specs, name=f"{asset}_checks")
    def checks(context: dg.AssetCheckExecutionContext, lakeloop: LakeloopSettings, curation: CurationResource):
        settings = lakeloop.load()
        cfg = curation.config(settings)
        uri = table_uri(settings, table)
        # the version the checks judge (read first; curation runs one at a time): training pins only versions
        # whose blocking checks all passed (trainers.pinning), so every result says which version it judged
        version = lake.version(uri, storage_options=storage_options(settings))
        where: dict[str, object] = {"delta_version": -1 if version is None else version,
                                                 "partition": context.run.tags.get("dagster/partition") or "-"}
        day = checked_rows(context, uri, table, storage_options=storage_options(settings))
        full = whole_table(lakeloop, table)
        yield _result("schema_contract", schema_contract(day, schema), where=where)
        yield _result("no_pii", no_pii_left(day, texts, Redactor(cfg.extra_pii_patterns)), where=where)
        yield _result("no_split_leakage", split_leakage(full, cfg.minhash), where=where)
        other = whole_table(lakeloop, next(t for t in TRAINING_TABLES if t != table)).height
        n_ex, n_pairs = (full.height, other) if table == TRAINING_TABLES[0] else (other, full.height)
        yield _result("min_rows", min_training_rows(n_ex, n_pairs, curation.min_training_rows), where=where)
        yield _result("duplicate_rate", duplicate_rate(doc_text(full, kind), cfg.minhash, max_rate=curation.max_duplicate_rate),
                      dg.AssetCheckSeverity.WARN, where=where)

    return checks
