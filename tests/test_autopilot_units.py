"""The autopilot's decisions as tables of cases (debounce, check-bound pins, retraining, rollout), and the
curate-on-arrival sensor over a real Delta table with a Dagster instance (no services)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest

from features.arrivals import ArrivalState, due_days, requested, rows_per_day
from monitors.autopilot import RolloutFacts, next_rollout_action
from trainers.pinning import CheckEval, checked_version
from trainers.retrain_policy import RetrainFacts, decide_retrain


# ---- curation on arrival: the debounce ---------------------------------------------------------------
def test_a_day_is_due_at_once_with_enough_rows_else_after_the_debounce() -> None:
    st = ArrivalState()
    due, waiting = due_days(st, {"2026-01-01": 600, "2026-01-02": 10}, now=0, min_new_rows=500, debounce_s=120)
    assert [d.day for d in due] == ["2026-01-01"] and waiting == ["2026-01-02: 10 new rows, due in 120s"]
    requested(st, "2026-01-01", 600, now=0)
    due, _ = due_days(st, {"2026-01-01": 600, "2026-01-02": 10}, now=119, min_new_rows=500, debounce_s=120)
    assert due == []
    due, _ = due_days(st, {"2026-01-01": 600, "2026-01-02": 30}, now=121, min_new_rows=500, debounce_s=120)
    assert [(d.day, d.new_rows) for d in due] == [("2026-01-02", 30)]


def test_late_rows_for_an_old_day_re_curate_that_day_only_and_not_more_often_than_the_debounce() -> None:
    st = ArrivalState()
    for day in ("2026-01-01", "2026-01-02"):
        requested(st, day, 100, now=0)
    st = ArrivalState.from_json(st.to_json())  # the cursor round-trips
    due, _ = due_days(st, {"2026-01-01": 100, "2026-01-02": 103}, now=60, min_new_rows=500, debounce_s=120)
    assert due == []  # pending since 60 s, last curated 60 s ago
    due, _ = due_days(st, {"2026-01-01": 100, "2026-01-02": 103}, now=200, min_new_rows=500, debounce_s=120)
    assert [d.day for d in due] == ["2026-01-02"]


def test_rows_per_day_come_from_the_delta_log(tmp_path: Path) -> None:
    from deltalake import write_deltalake

    uri = str(tmp_path / "bronze")
    assert rows_per_day(uri) == {}
    t = pa.table({"event_date": pa.array([date(2026, 1, 1)] * 3 + [date(2026, 1, 2)] * 2), "x": pa.array(range(5))})
    write_deltalake(uri, t, partition_by=["event_date"])
    write_deltalake(uri, t.slice(0, 1), partition_by=["event_date"], mode="append")
    assert rows_per_day(uri) == {"2026-01-01": 4, "2026-01-02": 2}


def test_curate_on_arrival_requests_one_run_per_due_day_and_remembers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deltalake import write_deltalake

    from orchestration.assets.curation.sensors import curate_on_arrival
    from orchestration.resources import LakeloopSettings
    from tests.pinned_settings import PinnedSettings

    home = tmp_path / "home"
    monkeypatch.setenv("LAKELOOP_CURATION_MIN_NEW_ROWS", "3")
    uri = str(home / "lake" / "bronze" / "feedback_events")
    t = pa.table({"event_date": pa.array([date(2026, 1, 1)] * 3 + [date(2026, 1, 2)]), "x": pa.array(range(4))})
    write_deltalake(uri, t, partition_by=["event_date"])
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance, resources={"lakeloop": PinnedSettings(home=str(home))})
        result = curate_on_arrival(ctx)
        assert [r.partition_key for r in result.run_requests] == ["2026-01-01"]
        assert result.run_requests[0].tags["lakeloop/trigger"] == "arrival"
        again = curate_on_arrival(dg.build_sensor_context(instance=instance, cursor=result.cursor,
                                                          resources={"lakeloop": PinnedSettings(home=str(home))}))
        assert not again.run_requests and "2026-01-02: 1 new rows" in again.skip_reason.skip_message


# ---- check-bound pins ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("evals", "latest", "want"), [
    ([], 3, None),  # nothing checked yet
    ([CheckEval(1, "d1", "no_pii", True, 1), CheckEval(2, "d2", "no_pii", True, 2)], 3, 2),  # v3 not checked yet
    ([CheckEval(1, "d1", "min_rows", False, 1), CheckEval(2, "d2", "min_rows", True, 2)], 2, 2),  # table-level: that version only
    ([CheckEval(1, "d1", "no_pii", True, 1), CheckEval(2, "d2", "no_pii", False, 2), CheckEval(3, "d3", "no_pii", True, 3)], 3, 1),
    ([CheckEval(2, "d2", "no_pii", False, 1), CheckEval(3, "d3", "no_pii", True, 2), CheckEval(4, "d2", "no_pii", True, 3)], 4, 4),
    ([CheckEval(1, "d1", "schema_contract", False, 1)], 1, None),
])
def test_training_pins_the_latest_version_whose_blocking_checks_passed(evals, latest, want) -> None:
    pin = checked_version(evals, latest=latest, table="gold/x")
    assert pin.version == want
    assert pin.reason  # always says why


def test_a_failed_day_check_says_which_day_to_curate_again() -> None:
    pin = checked_version([CheckEval(1, "2026-01-01", "no_pii", False, 1)], latest=1, table="gold/x")
    assert pin.version is None and "day 2026-01-01 failed no_pii at v1" in pin.reason


# ---- retraining ---------------------------------------------------------------------------------------
def _facts(**kw) -> RetrainFacts:
    base = dict(pinned=(5, 5), pinned_rows=1000, last_trained=None, baseline_rows=None, drift_requested=False,
                curation_pending=False, training_in_flight=False, seconds_since_last=None)
    return RetrainFacts(**{**base, **kw})


@pytest.mark.parametrize(("kw", "train", "trigger"), [
    ({}, True, "gold_rows"),  # first model
    ({"pinned": None}, False, ""),
    ({"training_in_flight": True}, False, ""),
    ({"last_trained": (4, 4), "baseline_rows": 900}, False, ""),  # 100 new < 500
    ({"last_trained": (4, 4), "baseline_rows": 400, "seconds_since_last": 10}, False, ""),  # cooldown
    ({"last_trained": (4, 4), "baseline_rows": 400, "seconds_since_last": 4000}, True, "gold_rows"),
    ({"last_trained": (4, 4), "baseline_rows": 990, "seconds_since_last": 10, "drift_requested": True}, True, "drift"),
    ({"last_trained": (5, 5), "baseline_rows": 0, "drift_requested": True}, False, ""),  # never the same data twice
    ({"drift_requested": True, "curation_pending": True}, False, ""),  # curate what is pending first
    ({"curation_pending": True}, False, ""),  # a backlog curated day by day trains once, at the end
    ({"pinned_rows": 120}, False, ""),  # a first model needs min_new_rows too
])
def test_retrain_decisions(kw, train, trigger) -> None:
    d = decide_retrain(_facts(**kw), min_new_rows=500, cooldown_s=1800)
    assert (d.train, d.trigger) == (train, trigger), d.reason


def test_drift_on_the_same_data_is_consumed_not_kept_forever() -> None:
    d = decide_retrain(_facts(last_trained=(5, 5), baseline_rows=0, drift_requested=True), min_new_rows=500, cooldown_s=0)
    assert not d.train and d.consume_drift
    d = decide_retrain(_facts(drift_requested=True, curation_pending=True), min_new_rows=500, cooldown_s=0)
    assert not d.consume_drift  # still waiting for curation: the request stays


# ---- rollout ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("facts", "action", "alert"), [
    (RolloutFacts(None, None, None, None, None), "wait", False),
    (RolloutFacts(None, None, "1", None, True), "first_champion", False),
    (RolloutFacts(None, None, "1", None, False, "auc 0.5 does not beat baseline length"), "wait", True),
    (RolloutFacts(None, None, "1", None, None), "wait", True),  # no baseline comparison recorded: no first champion
    (RolloutFacts("1", None, "2", None, None), "start_canary", False),
    (RolloutFacts("3", None, "2", None, None), "retire", False),  # v3 won its canary while v2 waited: v2 is no longer the best
    (RolloutFacts("10", None, "9", "version 9 is on hold: people", None), "wait", True),  # a hold keeps it
    (RolloutFacts("1", None, "10", None, None), "start_canary", False),  # versions compare as numbers
    (RolloutFacts("2", None, "2", None, None), "wait", False),  # a person made the challenger champion
    (RolloutFacts("1", None, "2", "version 2 is on hold: people", None), "wait", True),
    (RolloutFacts("1", "2", "3", None, None), "analyze", False),  # never two canaries: 3 waits
    (RolloutFacts("1", "2", None, None, None, seconds_since_analysis=30, window_s=600), "wait", False),
    (RolloutFacts("1", "2", None, None, None, seconds_since_analysis=601, window_s=600), "analyze", False),
    (RolloutFacts("1", "2", None, "the registered model is on hold: freeze", None), "wait", False),
])
def test_rollout_next_action(facts, action, alert) -> None:
    nxt = next_rollout_action(facts)
    assert (nxt.action, nxt.alert) == (action, alert), nxt.reason
    if facts.canary and facts.challenger:
        assert f"challenger v{facts.challenger} waits" in nxt.reason


def test_a_day_with_reference_feedback_is_curated_again_when_predictions_land(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Day 1 holds a reference event, day 2 only full ones: predictions landing for each day make only day 1 due."""
    from deltalake import write_deltalake

    from features.arrivals import reference_days
    from orchestration.assets.curation.sensors import curate_on_arrival
    from orchestration.resources import LakeloopSettings
    from tests.pinned_settings import PinnedSettings

    home = tmp_path / "home"
    monkeypatch.setenv("LAKELOOP_CURATION_MIN_NEW_ROWS", "2")
    feedback, predictions = (str(home / "lake" / "bronze" / t) for t in ("feedback_events", "predictions"))
    d1, d2 = date(2026, 1, 1), date(2026, 1, 2)
    write_deltalake(feedback, pa.table({"event_date": pa.array([d1, d1, d2, d2]), "model_name": ["m", "", "m", "m"]}),
                    partition_by=["event_date"])
    assert reference_days(feedback) == {"2026-01-01"}
    resources = {"lakeloop": PinnedSettings(home=str(home))}
    with dg.instance_for_test() as instance:
        first = curate_on_arrival(dg.build_sensor_context(instance=instance, resources=resources))
        assert sorted(r.partition_key for r in first.run_requests) == ["2026-01-01", "2026-01-02"]
        write_deltalake(predictions, pa.table({"event_date": pa.array([d1, d1, d2, d2]), "request_id": ["a", "b", "c", "d"]}),
                        partition_by=["event_date"])
        again = curate_on_arrival(dg.build_sensor_context(instance=instance, cursor=first.cursor, resources=resources))
        assert [r.partition_key for r in again.run_requests] == ["2026-01-01"]  # day 2 has no reference to join


def test_the_bad_candidate_is_a_training_pinned_to_gold_that_holds_the_bad_release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's bad candidate is the first training whose pinned gold holds the bad release's rows, not merely the
    first one requested after the release was sent (a drift retraining queued behind a canary pins gold without them)."""
    from types import SimpleNamespace

    from deltalake import write_deltalake

    from feedback.simulate import TWO_SENTENCE_APP
    from infra.settings import load_settings
    from infra.tables import table_uri
    from orchestration import demo_autopilot as D

    s = load_settings(home=tmp_path, lake_root=str(tmp_path / "lake"))
    ex, pr = table_uri(s, "gold/training_examples"), table_uri(s, "gold/preference_pairs")
    write_deltalake(ex, pa.table({"app_id": ["qa-web", "qa-mobile-v2"]}))  # v0
    write_deltalake(pr, pa.table({"app_id": ["qa-web"]}))  # v0
    write_deltalake(pr, pa.table({"app_id": [TWO_SENTENCE_APP]}), mode="append")  # v1: the bad release's pairs
    assert not D.gold_holds_app(s, "0,0", TWO_SENTENCE_APP) and D.gold_holds_app(s, "0,1", TWO_SENTENCE_APP)

    runs = {"before": SimpleNamespace(tags={"lakeloop/gold_versions": "0,1"}),  # requested before the release was sent
            "drift": SimpleNamespace(tags={"lakeloop/gold_versions": "0,0"}),
            "bad": SimpleNamespace(tags={"lakeloop/gold_versions": "0,1"}),
            "queued": SimpleNamespace(tags={})}
    bad = D.BadRelease(0.0, {"before"})
    monkeypatch.setattr(D, "_training_runs", lambda narrator: runs)
    assert list(D._bad_trainings(s, None, bad)) == ["bad"]  # type: ignore[arg-type]


def test_the_demo_waits_for_a_drift_report_while_a_check_is_running(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stall guard starts over while a drift check is queued or running: a slow check is waited for; with none in
    flight the wait ends after one stall period."""
    from types import SimpleNamespace

    from orchestration import demo_autopilot as D

    calls: list[float] = []

    class Narrator:
        def wait(self, what, done, timeout, *, between=None):  # noqa: ANN001, ANN201 - one stall period passes per call
            calls.append(timeout)
            return done()

    reports = iter([None, None, {"judged": True}])  # the report lands during the third stall period
    busy = iter([True, True])
    monkeypatch.setattr(D, "_drift_check_busy", lambda narrator: next(busy))
    cfg = SimpleNamespace(drift_window_minutes=0.5)
    app = SimpleNamespace(burst=lambda: None)
    assert D._wait_report(cfg, Narrator(), app, "report", lambda: next(reports)) == {"judged": True}  # type: ignore[arg-type]
    assert len(calls) == 3 and calls[0] == D._report_stall_s(cfg)  # type: ignore[arg-type]
    calls.clear()
    monkeypatch.setattr(D, "_drift_check_busy", lambda narrator: False)
    assert D._wait_report(cfg, Narrator(), app, "report", lambda: None) is None and len(calls) == 1  # type: ignore[arg-type]
