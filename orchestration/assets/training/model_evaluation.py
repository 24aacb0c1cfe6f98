"""`model_evaluation`: score the trained run on the pinned eval split beside the baselines and the current
`champion`, write the model card (with the gate's and the calibration picture), and gate it. The gate is a BLOCKING asset check: when it fails,
`registered_model` does not run and no alias moves; the failure is also an MLflow tag on the run."""

import math

import dagster as dg

from orchestration.assets.training.resources import TrainingResource, latest_metadata, mlflow_run_url
from orchestration.resources import LakeloopSettings
from trainers.candidate import evaluate_candidate
from trainers.evaluate import Pooled, why_not_measured

GATE = "promotion_gate"


def _pooled_metadata(pooled: Pooled | None) -> dict[str, object]:
    """A cross-fit first model's pooled pairwise accuracy and its paired differences to the baselines, as numbers and
    intervals (none for a model judged on the eval split alone)."""
    if pooled is None:
        return {}
    out: dict[str, object] = {}
    e = pooled.metrics.get("pairwise_accuracy")
    if e is not None and math.isfinite(e.value):
        out |= {"pooled_pairwise_accuracy": float(e.value), "pooled_pairwise_accuracy_ci": f"[{e.lo:.3f}, {e.hi:.3f}]"}
    for b, ms in pooled.paired.items():
        d = ms.get("pairwise_accuracy")
        if d is not None and math.isfinite(d.value):
            out |= {f"pooled_minus_{b}_pairwise": float(d.value), f"pooled_minus_{b}_pairwise_ci": f"[{d.lo:+.3f}, {d.hi:+.3f}]"}
    return out


@dg.asset(
    group_name="training",
    owners=["team:ml"],
    kinds={"mlflow", "scikitlearn"},
    deps=["reward_model"],
    check_specs=[dg.AssetCheckSpec(GATE, asset="model_evaluation", blocking=True,
                                   description="Beats the baselines; not worse than champion beyond the interval, on the newest eval split "
                                               "and on the champion's own; no slice regression.")],
    description=(
        "Pairwise accuracy, AUC, log-loss and calibration error with bootstrap 95% intervals, per slice (event type, "
        "app, model, length), beside a response-length and a TF-IDF + logistic-regression baseline and the champion."
    ),
)
def model_evaluation(context: dg.AssetExecutionContext, lakeloop: LakeloopSettings, training: TrainingResource) -> dg.MaterializeResult:
    settings = lakeloop.load()
    run_id = str(latest_metadata(context, "reward_model")["run_id"])
    out = evaluate_candidate(settings, run_id, gate=training.gate(), n_boot=training.n_boot, max_eval_clusters=training.max_eval_clusters,
                             cross_fit=training.gate_cross_fit)
    m = {k: v for k, v in out.report.metrics.items() if math.isfinite(v.value)}
    missing = sorted(set(out.report.metrics) - set(m))
    context.log.info("run %s: %s", run_id, out.decision.summary())
    metadata = {
        "run_id": run_id,
        "mlflow_run": mlflow_run_url(settings, run_id),
        "gate_passed": out.decision.passed,
        "gate_reasons": "; ".join(out.decision.reasons)[:2000] or "-",
        "champion_version": out.champion_version or "none",
        "champion_eval_split": out.trusted_split,  # the champion's own pinned eval split, also compared on
        "model_card": dg.MetadataValue.md(out.model_card),
        # the pictures by their MLflow artifact URL (http: the UI's browser fetches them from the tracking server)
        **{f"{k}_picture": dg.MetadataValue.md(f"![{k}]({url})") for k, url in out.pictures.items()},
        **{f"{k}": float(v.value) for k, v in m.items()},
        **{f"{k}_ci": f"[{v.lo:.3f}, {v.hi:.3f}]" for k, v in m.items()},
        **{f"baseline_{b}_{k}": float(v.value) for b, ms in out.report.baselines.items() for k, v in ms.items()
           if k in ("pairwise_accuracy", "auc") and math.isfinite(v.value)},
        "gate_evidence": out.evidence,  # what the baseline rules read: a first model's eval split + its cross-fit train split
        **_pooled_metadata(out.report.pooled),
        # a stream without thumbs has no AUC, one without preferences no pairwise accuracy: said, never NaN
        "not_measured": "; ".join(f"{k}: not measured ({why_not_measured(k)})" for k in missing) or "-",
    }
    check = dg.AssetCheckResult(
        check_name=GATE,
        passed=out.decision.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"reasons": "; ".join(out.decision.reasons) or "-", "champion_version": out.champion_version or "none",
                  # a failed gate's alert links its picture (gate_failure_alert turns url metadata into links)
                  **({"gate_picture": dg.MetadataValue.url(out.pictures["gate"])} if "gate" in out.pictures else {})},
    )
    return dg.MaterializeResult(metadata=metadata, check_results=[check])
