"""`lakeloop demo` (the whole loop end to end) and `lakeloop simulate` (the traffic generator alone)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from infra.services import REPO_ROOT
from orchestration.commands.common import quiet_third_party_output, say, settings

DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "qa_feedback" / "dev_feedback.json"


def simulate(
    data: Annotated[Path, typer.Option(help="The qa_feedback file to replay.")] = DEFAULT_DATA,
    first: Annotated[int, typer.Option(help="First question (0-499).")] = 400,
    count: Annotated[int, typer.Option(help="How many questions (4 scored answers and ~8 feedback events each).")] = 100,
    rate: Annotated[float, typer.Option(help="App requests per second; 0 = as fast as the service answers.")] = 20.0,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    drift_after: Annotated[float | None, typer.Option(help="Fraction of the run after which traffic drifts (0-1); none by default.")] = None,
    malformed_share: Annotated[float, typer.Option(help="Share of feedback events replaced by malformed payloads (0-1).")] = 0.0,
    seed: Annotated[int, typer.Option(help="Random seed (drift feedback, malformed picks, order).")] = 0,
    run_id: Annotated[int, typer.Option(help="Distinguishes ids of separate runs over the same questions.")] = 1,
    score: Annotated[bool, typer.Option("--score/--no-score", help="Score each answer through `lakeloop serve` first.")] = True,
) -> None:
    """Simulated app traffic: answers scored by the scoring service, then users' feedback sent to Kafka."""
    from feedback.producer import FeedbackProducer
    from feedback.simulate import Scorer, SimConfig
    from feedback.simulate import simulate as run

    s = settings()
    if not 0.0 <= malformed_share <= 1.0 or (drift_after is not None and not 0.0 <= drift_after <= 1.0):
        raise typer.BadParameter("--malformed-share and --drift-after are fractions between 0 and 1")
    cfg = SimConfig(first=first, count=count, rate=rate, duration_s=duration, drift_after=drift_after,
                    malformed_share=malformed_share, seed=seed, run_id=run_id)
    producer = FeedbackProducer(s)
    try:
        stats = run(data, cfg, send=producer.send, scorer=Scorer(s.serve_url) if score else None, say=say)
        producer.flush()
    finally:
        producer.close()
    say(f"simulate: {stats.summary()}")


def demo(
    data: Annotated[Path, typer.Option(help="The qa_feedback file to replay.")] = DEFAULT_DATA,
    backlog: Annotated[int | None, typer.Option(help="Questions of feedback backlog that train the first model (default: all 500 "
                                                "on autopilot, 400 scripted).")] = None,
    live: Annotated[int, typer.Option(help="Questions of stationary live traffic (scripted demo).")] = 40,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
    down: Annotated[bool, typer.Option("--down", help="Stop the services at the end.")] = False,
    autopilot: Annotated[bool, typer.Option("--autopilot/--scripted", help="autopilot (default): the platform's daemon runs the "
                                            "loop and the demo only plays the app; scripted: the demo drives each step itself.")] = True,
    encoder: Annotated[bool, typer.Option("--encoder/--no-encoder", help="Autopilot demo: let the transformer reward model (PyTorch + "
                                          "transformers) compete with the cheap candidates in every training. Off by default to fit "
                                          "~15 minutes on 2 CPU cores: a training job took 191 s and 574 s with it, 43 s and 40 s without.")] = False,
) -> None:
    """Run the whole loop end to end with the real qa_feedback data: start the platform with autopilot on, send the
    feedback backlog, play live traffic through `lakeloop serve`, drift it, release a buggy app, and narrate what the
    daemon does (from a fresh clone on 2 CPUs on 2026-12-07: 13.6 and 14.0 min, the demo itself 668 s and 642 s; the three
    runs before the paired canary 11.4-15.3 min; with --encoder 31 min)."""
    from orchestration.demo import DemoConfig, render_summary, run_demo

    quiet_third_party_output()  # the narration only: no artifact or weight-loading progress bars
    s = settings()
    say(f"lakeloop demo: LAKELOOP_HOME={s.home}")
    if autopilot:
        from orchestration.demo_autopilot import AutopilotDemoConfig, autopilot_base, run_autopilot_demo

        base = autopilot_base(data, encoder=encoder, seed=seed, **({"backlog_questions": backlog} if backlog is not None else {}))
        summary = run_autopilot_demo(s, AutopilotDemoConfig(base=base), say=say)
    else:
        summary = run_demo(s, DemoConfig(data_path=data, backlog_questions=backlog or 400, live_questions=live, seed=seed), say=say)
    say(render_summary(s, summary, services_stay_up=not down))
    if down:
        from infra import services

        services.down(s, log=say)


def register(app: typer.Typer) -> None:
    app.command()(demo)
    app.command()(simulate)
