"""Reward-model training, evaluation, gating and registry (issue 5).

One module per stage: ``config`` (the run's typed config), ``base_model`` (offline weights), ``data``
(pinned gold tables, batching), ``model`` (encoder + scalar head, losses), ``train`` (the loop and the
``python -m trainers.train`` / Dagster Pipes entry point), ``evaluate`` (metrics, slices, baselines,
model card), ``gate`` (pure decisions), ``tracking`` (the one MLflow wrapper for runs), ``registry`` (model
versions, compare-and-set aliases, the promotion ledger). Nothing here does work at import time.
"""
