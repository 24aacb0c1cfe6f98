"""`lakeloop serve | promote | rollback | hold | rollout | drift`: the scoring service and operator control of rollouts."""

from __future__ import annotations

import getpass
import json
from datetime import datetime, timedelta, timezone
from typing import Annotated

import typer

from orchestration.commands.common import say, settings

rollout_app = typer.Typer(help="Where the canary rollout stands, and one analysis window on demand.", no_args_is_help=True)


def _actor(actor: str | None) -> str:
    return actor or f"cli:{getpass.getuser()}"


def _show(status) -> None:  # type: ignore[no-untyped-def]
    say(f"champion={status.champion or '-'}  canary={status.canary or '-'}  challenger={status.challenger or '-'}  "
        f"canary_share={status.canary_share:.0%}")


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default settings.serve_host, else bind_host: 127.0.0.1); "
                                             "beyond loopback it needs LAKELOOP_SERVE_API_KEYS.")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default settings.serve_port / LAKELOOP_SERVE_PORT).")] = None,
    poll: Annotated[float | None, typer.Option(help="Seconds between alias polls (default LAKELOOP_SERVE_POLL_SECONDS).")] = None,
) -> None:
    """Serve POST /score with the `champion` and a sticky `canary`; /healthz, /readyz, /stats. Ctrl-C stops."""
    from feedback.kafka_io import ensure_topic
    from infra.mlflow_auth import use_credentials
    from infra.surfaces import require_credentials
    from monitors import serve as service

    s = settings()
    require_credentials(s, ("serve",), serve_host=host)  # before anything else, as `lakeloop up`
    use_credentials(s, serve=True)  # MLflow: the read-only serve user when it has a password
    ensure_topic(s, s.predictions_topic)
    say(f"scoring {s.registered_model_name} on http://{host or s.serve_bind_host}:{port or s.serve_port} "
        f"(predictions -> Kafka topic {s.predictions_topic!r})")
    service.run(s, host=host, port=port, poll_seconds=poll)


def promote(
    start: Annotated[bool, typer.Option("--start", help="Start a canary from the challenger (or --version) instead.")] = False,
    version: Annotated[str | None, typer.Option(help="With --start: the version to canary (default: the challenger).")] = None,
    step: Annotated[bool, typer.Option("--step", help="Move the canary to its next traffic step instead of champion.")] = False,
    expect: Annotated[str | None, typer.Option(help="Refuse unless the canary is this version (safe scripting).")] = None,
    reason: Annotated[str, typer.Option(help="Why; recorded in the promotion ledger.")] = "manual promotion",
    actor: Annotated[str | None, typer.Option(help="Who; default cli:<user>.")] = None,
) -> None:
    """Promote through the same compare-and-set module as the automatic rollout (ledger + version tags)."""
    from monitors import rollout
    from monitors.canary_job import policy_from_settings

    s = settings()
    policy = policy_from_settings(s)
    if start:
        status = rollout.start_canary(s, version=version, policy=policy, actor=_actor(actor), reason=reason)
    elif step:
        current = rollout.read_status(s)
        nxt = rollout.next_share(policy, current)
        if nxt is None:
            say(f"canary is at its last step ({current.canary_share:.0%}); run `lakeloop promote` to make it champion")
            raise typer.Exit(1)
        status = rollout.step_up(s, nxt, actor=_actor(actor), reason=reason)
    else:
        status = rollout.promote(s, actor=_actor(actor), reason=reason, expected_canary=expect)
    _show(status)


def rollback(
    reason: Annotated[str, typer.Option(help="Why; recorded in the promotion ledger and sent as an alert.")] = "manual rollback",
    expect: Annotated[str | None, typer.Option(help="Refuse unless the canary is this version.")] = None,
    actor: Annotated[str | None, typer.Option(help="Who; default cli:<user>.")] = None,
) -> None:
    """Canary traffic to 0 and drop the canary alias; the champion stays. Alerts the configured channels."""
    from infra.links import mlflow_model_version
    from monitors import rollout
    from monitors.alerts import Alert, notifier_from_settings

    s = settings()
    before = rollout.read_status(s)
    status = rollout.rollback(s, actor=_actor(actor), reason=reason, expected_canary=expect)
    notifier_from_settings(s).notify(
        Alert("rollback", f"canary v{before.canary} rolled back by {_actor(actor)}: {reason}", "critical",
              links={"canary_model": mlflow_model_version(s, str(before.canary))}, dedup_key=f"rollback:{before.canary}")
    )
    _show(status)


def hold(
    version: Annotated[str | None, typer.Option(help="The model version to hold (default: the whole registered model).")] = None,
    reason: Annotated[str | None, typer.Option(help="Why; the tag's value, shown to the autopilot's alerts.")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Lift the hold (on --version, or on the registered model).")] = False,
) -> None:
    """Stop the autopilot moving a model version (or, without --version, anything): the `lakeloop.hold` tag,
    the same one you can set in the MLflow UI. Without --reason or --clear: show the holds."""
    from monitors import overrides

    s = settings()
    if clear:
        overrides.clear_hold(s, version=version)
    elif reason is not None:
        overrides.set_hold(s, reason, version=version)
    elif version is not None:
        raise typer.BadParameter("give --reason to hold a version, or --clear to lift its hold")
    h = overrides.holds(s)
    say(f"registered model {s.registered_model_name}: " + (f"on hold ({h.model})" if h.model else "not held"))
    for v, why in sorted(h.versions.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0):
        say(f"  version {v}: on hold ({why})")


@rollout_app.command("external")
def rollout_external(settle: Annotated[float, typer.Option(help="Seconds a lakeloop change may take to reach MLflow.")] = 60.0) -> None:
    """Record alias changes made by hand in MLflow in the promotion ledger now (the autopilot does it every tick)."""
    from monitors import overrides

    changes = overrides.detect_external_changes(settings(), settle_seconds=settle)
    for c in changes:
        say(c.summary())
    if not changes:
        say("MLflow's aliases agree with the promotion ledger")


@rollout_app.command("status")
def rollout_status(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Aliases and the canary's traffic share, as the scoring service sees them."""
    from monitors import rollout

    status = rollout.read_status(settings())
    if as_json:
        typer.echo(json.dumps(status.__dict__))
    else:
        _show(status)


@rollout_app.command("analyze")
def rollout_analyze(
    minutes: Annotated[int, typer.Option(help="Window length, ending now.")] = 60,
    source: Annotated[str, typer.Option(help="lake (bronze tables) or kafka (topics).")] = "lake",
    apply: Annotated[bool, typer.Option("--apply/--dry-run", help="Carry out the decision, or only print it.")] = False,
) -> None:
    """One canary analysis window: metrics per version, the decision, and (with --apply) its execution."""
    from monitors.alerts import notifier_from_settings
    from monitors.canary_job import run_canary_window

    if source not in ("lake", "kafka"):
        raise typer.BadParameter("source must be lake or kafka")
    s = settings()
    until = datetime.now(timezone.utc)
    result = run_canary_window(s, since=until - timedelta(minutes=minutes), until=until, notifier=notifier_from_settings(s),
                               source=source, apply=apply, actor=f"cli:{getpass.getuser()}")  # type: ignore[arg-type]
    if result.comparison is not None:
        for k, v in result.comparison.metrics().items():
            say(f"  {k:28s} {v:.4g}")
    say(f"decision: {type(result.decision).__name__}: {result.decision.reason}{'' if apply else ' (dry run)'}")
    _show(result.after)


def drift(
    minutes: Annotated[int, typer.Option(help="Window length, ending now.")] = 60,
    source: Annotated[str, typer.Option(help="lake (bronze tables) or kafka (topics).")] = "lake",
    embed_sample: Annotated[int, typer.Option(help="Rows embedded with all-MiniLM-L6-v2 (0: no embedding drift).")] = 256,
    reference_sample: Annotated[int, typer.Option(help="Training rows used as reference.")] = 5000,
) -> None:
    """Check one window of traffic for drift against the champion's training set; writes the HTML report."""
    from infra.errors import DataError
    from monitors import model_store
    from monitors.alerts import notifier_from_settings
    from monitors.drift_job import prepare_reference, run_drift_window
    from monitors.windows import current_frame, load_window, score_frame, training_reference

    if source not in ("lake", "kafka"):
        raise typer.BadParameter("source must be lake or kafka")
    s = settings()
    champion = model_store.alias_version(s, "champion")
    if champion is None:
        raise DataError("no champion model to monitor", hint="promote a model first (`lakeloop promote --start`)")
    until = datetime.now(timezone.utc)
    since = until - timedelta(minutes=minutes)
    say(f"reference: scoring up to {reference_sample} training rows with champion v{champion} ...")
    ref_raw = training_reference(s, sample=reference_sample, version=champion)
    ref_raw["score"] = score_frame(model_store.load_pyfunc(s, champion), ref_raw)
    reference = prepare_reference(ref_raw, embed_sample=embed_sample)
    say("window: reading predictions and feedback ...")
    window = load_window(s, since=since, until=until, source=source)  # type: ignore[arg-type]
    say(f"window: {window.summary()}")
    cur = current_frame(window.predictions, window.feedback)
    result = run_drift_window(s, reference, cur, window_start=since, window_end=until, notifier=notifier_from_settings(s),
                              embed_sample=embed_sample, model_version=champion)
    say(result.verdict.summary())
    say(f"streak: {result.streak.length}/{result.streak.required} ({result.streak.action})")
    say(f"report: {result.report_url or result.report_note}")
    if result.chart_url or result.chart_note:
        say(f"picture: {result.chart_url or result.chart_note}")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("promote")(promote)
    app.command("rollback")(rollback)
    app.command("hold")(hold)
    app.command("drift")(drift)
    app.add_typer(rollout_app, name="rollout")
