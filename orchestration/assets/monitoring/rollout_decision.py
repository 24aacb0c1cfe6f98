"""`rollout_decision`: start the waiting challenger's canary (or make it the first champion, or retire it when a
newer champion superseded it), else canary
analysis, the pure decision, and its execution.

Compares canary and champion on agreement with later user feedback and on the Brier score of their scores against it
(always-valid sequential tests on counts and sums pooled since the canary started, ``monitors.sequential``), error rate
and latency p95; ``decide_rollout`` says Promote / Hold / Rollback; the rollout module moves aliases (compare-and-set,
ledger, version tags) and the notifier alerts on rollbacks and promotions.
"""

import dagster as dg

from infra import links
from monitors import rollout
from monitors.alerts import notifier_from_settings
from monitors.autopilot import start_next
from monitors.canary_job import policy_from_settings, run_canary_window
from orchestration.assets.monitoring.resources import MonitoringResource, WindowConfig
from orchestration.resources import LakeloopSettings


@dg.asset(
    group_name="monitoring",
    kinds={"mlflow"},
    owners=["team:ml-platform"],
    deps=["registered_model"],  # the gated challenger the rollout starts from
    description="Challenger -> canary (first champion if none and it beats the baselines); then Promote / Hold / Rollback of "
                "the canary from its online metrics.",
)
def rollout_decision(
    context: dg.AssetExecutionContext, lakeloop: LakeloopSettings, monitoring: MonitoringResource,
    config: WindowConfig,
) -> dg.MaterializeResult:
    settings = lakeloop.load()
    if monitoring.apply_rollout and rollout.read_status(settings).canary is None:  # no canary: start the waiting challenger
        nxt, delivery = start_next(settings, policy=policy_from_settings(settings), actor=f"dagster:{context.run_id[:8]}",
                                   notifier=notifier_from_settings(settings))
        after = rollout.read_status(settings)
        context.log.info("%s: %s", nxt.action, nxt.reason)
        return dg.MaterializeResult(metadata={
            "decision": {"start_canary": "StartCanary", "first_champion": "FirstChampion", "retire": "Retire"}.get(nxt.action, "Hold"),
            "reason": nxt.reason, "applied": nxt.action != "wait", "champion_after": after.champion or "-",
            "canary_after": after.canary or "-", "canary_share_after": after.canary_share,
            **({"alert": delivery.status} if delivery is not None else {}),
        })
    since, until = config.window(monitoring.window_minutes)
    result = run_canary_window(
        settings, since=since, until=until, notifier=notifier_from_settings(settings), policy=policy_from_settings(settings),
        source=monitoring.source, actor=f"dagster:{context.run_id[:8]}", apply=monitoring.apply_rollout,
        links={"dagster_run": links.dagster_run(settings, context.run_id)},
    )
    context.log.info("decision: %s (%s)", type(result.decision).__name__, result.decision.reason)
    metadata: dict[str, object] = {
        "decision": type(result.decision).__name__,
        "reason": result.decision.reason,
        "applied": monitoring.apply_rollout,
        "champion_before": result.before.champion or "-",
        "canary_before": result.before.canary or "-",
        "canary_share_before": result.before.canary_share,
        "champion_after": result.after.champion or "-",
        "canary_after": result.after.canary or "-",
        "canary_share_after": result.after.canary_share,
        "invalid_records_skipped": sum(result.invalid_records.values()),  # Kafka windows: what the ingestor would reject
    }
    if result.comparison is not None:
        metadata["metrics"] = dg.MetadataValue.json(result.comparison.metrics())
    if result.chart_url:  # agreement per arm with always-valid intervals, traffic share, decisions (the canary's MLflow run)
        metadata["canary_picture"] = dg.MetadataValue.md(f"![canary vs champion]({result.chart_url})")
    if result.delivery is not None:
        metadata["alert"] = result.delivery.status
    return dg.MaterializeResult(metadata=metadata)
