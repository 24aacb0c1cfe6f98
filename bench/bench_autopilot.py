"""Time to learn and time to protect, with autopilot, on this machine (issue 15's benchmark).

Runs the autopilot demo (``orchestration.demo_autopilot``) on its own home and free ports and reads its clock:
- time to learn: the feedback backlog (3,981 events) produced -> a gated model registered by the daemon; drift onset
  -> a model retrained on the drifted feedback serving canary traffic;
- time to protect: drift onset -> drift alert (seconds and windows); a bad stretch of data produced (an app release
  with inverted feedback on texts the lake has not seen) -> its model judged by the gate (or by the canary).
The peer is the target the issue sets (no other tool runs this loop here): each figure is printed beside it.

    python -m bench.bench_autopilot [--data PATH]      # ~10 min on 2 cores (560 s on 2026-12-07)
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from infra.ports import free_port

TARGETS = {"time_to_first_model_s": 600.0, "time_to_drift_alert_s": None, "time_to_canary_after_alert_s": None,
           "time_to_judge_bad_data_s": None}


def main() -> None:
    from infra import services
    from infra.settings import load_settings
    from orchestration.commands.common import say
    from orchestration.demo_autopilot import AutopilotDemoConfig, autopilot_base, run_autopilot_demo

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "qa_feedback" / "dev_feedback.json")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="lakeloop-bench-autopilot-"))
    settings = load_settings(home=home, kafka_port=free_port(), kafka_controller_port=free_port(), mlflow_port=free_port(),
                             dagster_port=free_port(), serve_port=free_port(), collector_port=free_port())
    cfg = AutopilotDemoConfig(base=autopilot_base(args.data))
    try:
        summary = run_autopilot_demo(settings, cfg, say=say)
    finally:
        services.down(settings, log=lambda m: None)
    window = cfg.drift_window_minutes * 60
    rows = [
        ("time to learn: the backlog (~4k events) produced -> gated model registered", summary.facts.get("time_to_first_model_s"), "<= 600 s"),
        ("time to protect: drift onset -> drift alert", summary.facts.get("time_to_drift_alert_s"), f"windows of {window:.0f}s"),
        ("time to learn: drift alert -> retrained model on canary", summary.facts.get("time_to_canary_after_alert_s"), "-"),
        ("time to protect: bad data produced -> its model judged", summary.facts.get("time_to_judge_bad_data_s"), "-"),
    ]
    print("\n| figure | ours | target |\n|---|---|---|")
    for name, value, target in rows:
        extra = f" ({value / window:.1f} windows)" if value is not None and "alert" in name and "onset" in name else ""
        print(f"| {name} | {'not reached' if value is None else f'{value:.0f} s{extra}'} | {target} |")
    print(f"\nwhole run {summary.facts.get('elapsed_s')} s; decisions: {summary.decisions}")
    out = Path(__file__).resolve().parent / "results" / "autopilot.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"facts": {k: v for k, v in summary.facts.items() if k.startswith("time_") or k == "elapsed_s"},
                               "decisions": summary.decisions}, indent=1, default=str))


if __name__ == "__main__":
    main()
