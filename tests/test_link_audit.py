"""The acceptance walk of issue 21 (tests.link_audit), on small fake metadata, alert lines and output: it finds a
file:// URI wherever it hides and the pictures where they should be, and it can fail."""

from __future__ import annotations

import json

import dagster as dg

from tests.link_audit import line_file_uris, metadata_file_uris, missing_pictures, picture_urls

PNG = "http://mlflow:5000/get-artifact?path=drift_report%2Fdrift_per_column.png&run_uuid=r1"
GOOD = {
    "drift_report": [{"drifted": True, "report": dg.MetadataValue.url("http://mlflow:5000/#/experiments/1/runs/r1/artifacts/r.html"),
                      "groups": dg.MetadataValue.json({"text": True}), "drift_picture": dg.MetadataValue.md(f"![drift]({PNG})")}],
    "model_evaluation": [{"gate_picture": dg.MetadataValue.md("![gate](https://mlflow.example.com/get-artifact?path=evaluation%2Fgate.png)"),
                          "model_card": dg.MetadataValue.md("# Model card\n\nno links")}],
    "rollout_decision": [{"decision": "Hold"}, {"decision": "Rollback", "canary_picture": f"![canary vs champion]({PNG})"}],
    "silver_feedback": [{"rows": 12, "table": "/tmp/lake/silver/feedback"}],  # a plain path is no link
}


def test_clean_metadata_passes() -> None:
    assert metadata_file_uris(GOOD) == []
    assert missing_pictures(GOOD) == []
    assert picture_urls(GOOD["drift_report"][0], "drift_picture") == [PNG]
    assert picture_urls(GOOD["rollout_decision"][0], "canary_picture") == []


def test_a_file_uri_is_found_in_any_kind_of_value() -> None:
    bad = {
        "drift_report": [{"report": dg.MetadataValue.url("file:///tmp/drift/w.html")}],
        "model_evaluation": [{"model_card": dg.MetadataValue.md("see [card](file:///home/x/model_card.md)")}],
        "reward_model": [{"lineage": dg.MetadataValue.json({"tables": [{"uri": "file:///lake/gold"}]})}],
        "rollout_decision": [{"note": "report at file:///tmp/r.html"}],
    }
    found = metadata_file_uris(bad)
    assert [f.split(":", 1)[0] for f in found] == ["drift_report[0].report", "model_evaluation[0].model_card",
                                                   "reward_model[0].lineage.tables[0].uri", "rollout_decision[0].note"]
    assert all("file://" in f for f in found)


def test_missing_or_non_http_pictures_are_named() -> None:
    got = missing_pictures({
        "drift_report": [{"drift_picture": dg.MetadataValue.text("not logged (MLflow at http://x is not reachable)")}],
        "model_evaluation": [{"gate_picture": dg.MetadataValue.md("![gate](file:///tmp/gate.png)")}],
    })
    assert got == ["drift_report: none of 1 materializations has a drift_picture image",
                   "model_evaluation.gate_picture: file:///tmp/gate.png is not http", "rollout_decision: no materialization"]


def test_alert_lines_and_output_are_walked_as_json_or_text() -> None:
    alert = {"kind": "drift", "links": {"report": "http://mlflow:5000/#/r", "drift_picture": PNG}, "details": {"report": "-"}}
    lines = [json.dumps(alert), "report: http://mlflow:5000/#/r", "not json {"]
    assert line_file_uris("alerts.jsonl", lines) == []
    leaked = [json.dumps({**alert, "details": {"report": "file:///tmp/w.html"}}), "report: file:///tmp/w.html"]
    found = line_file_uris("alerts.jsonl", leaked)
    assert [f.split(": ", 1)[0] for f in found] == ["alerts.jsonl:1.details.report", "alerts.jsonl:2"]
