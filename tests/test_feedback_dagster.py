"""The feedback group's Dagster definitions load, and the lag sensor's decision (a pure function)."""

from __future__ import annotations

import dagster as dg
import pytest

from orchestration.assets.feedback.sensors import lag_run_key


def test_feedback_group_is_in_the_definitions() -> None:
    from orchestration.definitions import defs

    graph = defs.resolve_asset_graph()
    for key in ("bronze_feedback_events", "bronze_dead_letters", "bronze_predictions"):
        node = graph.get(dg.AssetKey(key))
        assert node.group_name == "feedback", key
    assert defs.resolve_job_def("ingest_feedback_job") is not None
    assert defs.resolve_sensor_def("kafka_lag_sensor") is not None


@pytest.mark.parametrize(
    ("lag", "min_records", "want"),
    [
        ({"feedback": {0: 0, 1: 0}, "predictions": {}}, 1, None),
        ({"feedback": {0: 3, 1: 0}, "predictions": {0: 0}}, 1, "lag-feedback3-predictions0"),
        ({"feedback": {0: 3}, "predictions": {0: 2}}, 10, None),
        ({"feedback": {0: 3}, "predictions": {0: 20}}, 10, "lag-feedback3-predictions20"),
    ],
)
def test_lag_run_key(lag: dict, min_records: int, want: str | None) -> None:
    assert lag_run_key(lag, min_records=min_records) == want
