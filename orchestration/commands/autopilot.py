"""`lakeloop autopilot on|off|status`: the one switch of the loop on a running platform."""

from __future__ import annotations

from typing import Annotated

import typer

from orchestration.commands.common import say, settings


def _show(states: list) -> None:  # list[SensorState]
    for st in states:
        default = "on" if st.default_running else "off"
        say(f"  {st.name:<30} {'[green]on[/]' if st.running else '[yellow]off[/]'}   (default {default})")


def autopilot(
    action: Annotated[str, typer.Argument(help="on: every automation of the loop runs; off: nothing moves by itself; status: show.")] = "status",
) -> None:
    """Turn the whole loop on or off on the running instance (the sensors on the Dagster UI's Automation page).

    on/off is stored in the Dagster instance and outlives restarts; LAKELOOP_AUTOPILOT=on|off sets what a fresh
    instance starts with. People stay in charge either way: `lakeloop promote`, `lakeloop rollback` and the MLflow
    registry (hold tag, aliases moved by hand) work at any moment.
    """
    from infra.errors import ConfigError
    from monitors.alerts import Alert, notifier_from_settings
    from orchestration.automation import sensor_states, set_autopilot

    s = settings()
    if action not in ("on", "off", "status"):
        raise ConfigError(f"unknown action {action!r}", hint="lakeloop autopilot on | off | status")
    if action == "status":
        states = sensor_states(s)
        running = sum(st.running for st in states)
        say(f"autopilot: {'on' if running == len(states) else 'off' if running == 0 else 'partly on'} "
            f"({running}/{len(states)} automations running) on {s.dagster_url}/automation")
        _show(states)
        return
    from infra import services

    if action == "on":  # the continuous ingestors first, so the sensors find data flowing
        services.up(s.model_copy(update={"autopilot": True}), log=say, only=list(services.INGEST_SERVICE_NAMES))
    states = set_autopilot(s, action == "on")
    if action == "off":
        services.down(s, log=say, only=list(services.INGEST_SERVICE_NAMES))
    say(f"autopilot {action}: {sum(st.running for st in states)}/{len(states)} automations running")
    _show(states)
    if action == "off":
        notifier_from_settings(s).notify(Alert("autopilot_paused", "autopilot turned off: nothing moves by itself until "
                                               "`lakeloop autopilot on`", "warning", dedup_key=None))


def register(app: typer.Typer) -> None:
    app.command("autopilot")(autopilot)
