"""The autopilot switch: which automations close the loop, their default status, and flipping them all at once.

Autopilot is the set of sensors in ``AUTOPILOT_SENSORS`` and schedules in ``AUTOPILOT_SCHEDULES``. With
``LAKELOOP_AUTOPILOT=on`` (the default) they are defined RUNNING, so a fresh instance runs the loop as soon as the
daemon is up; ``off`` defines them STOPPED (the manual behaviour). ``lakeloop autopilot on|off`` flips every one on
the *running* instance through the webserver's GraphQL API, as the Automation page's toggles do; Dagster stores that
state in the instance, so it survives restarts and wins over the default in code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import dagster as dg

from infra.errors import ConfigError, ServiceError
from infra.settings import Settings, load_settings

# the loop, in the order a feedback event meets them (the kafka_lag_sensor is not part of it: the
# continuous ingest services of `lakeloop up` replace it; it stays a manual fallback)
AUTOPILOT_SENSORS: tuple[str, ...] = (
    "curate_on_arrival",
    "drift_check_sensor",
    "retrain_on_new_data",
    "rollout_sensor",
    "monitoring_run_failure_alert",
    "gate_failure_alert",
    "registry_watch",
    "erasure_requests_sensor",  # governance: the erasure requests apps send on the feedback topic
)
# the maintenance the loop owes: the deferred purge of erased rows' files, bronze raw retention
AUTOPILOT_SCHEDULES: tuple[str, ...] = (
    "erasure_purge_schedule",
    "raw_retention_schedule",
)
AUTOPILOT: tuple[str, ...] = AUTOPILOT_SENSORS + AUTOPILOT_SCHEDULES
LOCATION = "lakeloop"
REPOSITORY = "__repository__"
TRIGGER_TAG = "lakeloop/trigger"  # why an autopilot run was requested (gold_rows, drift, arrival, canary_window, ...)


def autopilot_default() -> dg.DefaultSensorStatus:
    """RUNNING when the settings say autopilot is on (read when the definitions load), else STOPPED."""
    try:
        on = load_settings().autopilot
    except ConfigError:
        on = False  # a broken config must not start anything; `lakeloop up` reports the config error itself
    return dg.DefaultSensorStatus.RUNNING if on else dg.DefaultSensorStatus.STOPPED


def autopilot_schedule_default() -> dg.DefaultScheduleStatus:
    """The schedules' ``autopilot_default``."""
    running = autopilot_default() == dg.DefaultSensorStatus.RUNNING
    return dg.DefaultScheduleStatus.RUNNING if running else dg.DefaultScheduleStatus.STOPPED


def tick_seconds() -> int:
    try:
        return load_settings().autopilot_tick_seconds
    except ConfigError:
        return 30


@dataclass(frozen=True)
class SensorState:
    """One autopilot automation on the running instance (a sensor or a schedule)."""

    name: str
    running: bool
    default_running: bool
    id: str
    kind: Literal["sensor", "schedule"] = "sensor"


_SENSORS = """
query Sensors($selector: RepositorySelector!) {
  sensorsOrError(repositorySelector: $selector) {
    __typename
    ... on Sensors { results { id name defaultStatus sensorState { status } } }
    ... on PythonError { message }
    ... on RepositoryNotFoundError { message }
  }
}
"""
_START = """
mutation Start($selector: SensorSelector!) {
  startSensor(sensorSelector: $selector) {
    __typename
    ... on Sensor { name sensorState { status } }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
  }
}
"""
_STOP = """
mutation Stop($id: String!) {
  stopSensor(id: $id) {
    __typename
    ... on StopSensorMutationResult { instigationState { status } }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
  }
}
"""
_SCHEDULES = """
query Schedules($selector: RepositorySelector!) {
  schedulesOrError(repositorySelector: $selector) {
    __typename
    ... on Schedules { results { id name defaultStatus scheduleState { status } } }
    ... on PythonError { message }
    ... on RepositoryNotFoundError { message }
  }
}
"""
_START_SCHEDULE = """
mutation StartSchedule($selector: ScheduleSelector!) {
  startSchedule(scheduleSelector: $selector) {
    __typename
    ... on ScheduleStateResult { scheduleState { status } }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
    ... on ScheduleNotFoundError { message }
  }
}
"""
_STOP_SCHEDULE = """
mutation StopSchedule($id: String!) {
  stopRunningSchedule(id: $id) {
    __typename
    ... on ScheduleStateResult { scheduleState { status } }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
    ... on ScheduleNotFoundError { message }
  }
}
"""


def _gql(settings: Settings, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    import requests

    url = f"{settings.dagster_url}/graphql"
    try:
        r = requests.post(url, json={"query": query, "variables": variables}, timeout=30)
        r.raise_for_status()
        body = r.json()
    except (requests.RequestException, ValueError) as exc:
        raise ServiceError(f"the Dagster webserver at {settings.dagster_url} did not answer: {exc}",
                           hint="start the platform with `lakeloop up`") from None
    if body.get("errors"):
        raise ServiceError(f"Dagster GraphQL error: {body['errors'][0].get('message', body['errors'])}",
                           hint="see the webserver log under <home>/logs")
    return body["data"]


def _listed(settings: Settings, query: str, field: str, typename: str) -> dict[str, dict[str, Any]]:
    data = _gql(settings, query, {"selector": {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY}})
    res = data[field]
    if res["__typename"] != typename:
        raise ServiceError(f"cannot list the {typename.lower()} of code location {LOCATION}: {res.get('message', res['__typename'])}",
                           hint="open the Dagster UI's Deployment page: the code location may have failed to load")
    return {s["name"]: s for s in res["results"]}


def sensor_states(settings: Settings) -> list[SensorState]:
    """Every autopilot automation's state on the running instance: the sensors, then the schedules."""
    sensors = _listed(settings, _SENSORS, "sensorsOrError", "Sensors")
    schedules = _listed(settings, _SCHEDULES, "schedulesOrError", "Schedules")
    return ([SensorState(n, sensors[n]["sensorState"]["status"] == "RUNNING", sensors[n]["defaultStatus"] == "RUNNING",
                         sensors[n]["id"]) for n in AUTOPILOT_SENSORS if n in sensors]
            + [SensorState(n, schedules[n]["scheduleState"]["status"] == "RUNNING", schedules[n]["defaultStatus"] == "RUNNING",
                           schedules[n]["id"], "schedule") for n in AUTOPILOT_SCHEDULES if n in schedules])


def set_autopilot(settings: Settings, on: bool, *, names: Sequence[str] = AUTOPILOT) -> list[SensorState]:
    """Start (``on``) or stop every autopilot automation on the running instance; returns the states after."""
    for state in sensor_states(settings):
        if state.name not in names or state.running == on:
            continue
        if state.kind == "schedule" and on:
            selector = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "scheduleName": state.name}
            out = _gql(settings, _START_SCHEDULE, {"selector": selector})["startSchedule"]
        elif state.kind == "schedule":
            out = _gql(settings, _STOP_SCHEDULE, {"id": state.id})["stopRunningSchedule"]
        elif on:
            selector = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "sensorName": state.name}
            out = _gql(settings, _START, {"selector": selector})["startSensor"]
        else:
            out = _gql(settings, _STOP, {"id": state.id})["stopSensor"]
        if out["__typename"] in ("PythonError", "UnauthorizedError", "ScheduleNotFoundError"):
            raise ServiceError(f"could not {'start' if on else 'stop'} {state.kind} {state.name}: {out.get('message')}",
                               hint="try the toggle on the Dagster UI's Automation page")
    return sensor_states(settings)
