"""`lakeloop forget`: erase one user from the lake (``features.erasure``)."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from infra.errors import ConfigError
from orchestration.commands.common import say, settings


def forget(
    user_id: Annotated[str | None, typer.Option("--user-id", help="The user's id exactly as apps send it in `user_id`; `-` reads "
                                                "it from stdin (keeps it out of the shell history and the process list).")] = None,
    vacuum_now: Annotated[bool, typer.Option("--vacuum-now", help="Delete the files that held the rows now instead of after the "
                                             "grace (erasure_grace_hours, default 168 h): urgent requests and tests.")] = False,
    vacuum_due: Annotated[bool, typer.Option("--vacuum-due", help="Erase no one: vacuum every earlier erasure whose grace has "
                                             "passed (`lakeloop lake optimize` does this too).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the erasure record(s) as JSON.")] = False,
) -> None:
    """Delete one user's rows from every table that can hold them, and record it.

    Where: bronze/feedback_events, the dead letters that parse, bronze/predictions
    (the user's responses and conversations), silver/feedback, both gold tables
    (an example that averages the user's vote goes whole), silver/minhash_index,
    and the user's pending requests in governance/erasure_requests (apps ask with
    an erasure_request event; the autopilot's erasure_job runs this for them).

    When: the rows leave the current versions at once (the next curation and
    training never see them); the files that held them, in every version, are
    deleted from storage after erasure_grace_hours (168 h), pinned gold versions
    included: erasure wins over lineage.

    Record: table governance/erasures (time, pseudonym - never the raw id -, rows
    removed per table, files). Model versions whose pinned gold versions held the
    user are tagged lakeloop.contains_erased_data=true in MLflow (which must
    answer), and `lakeloop lineage model` says "contains erased data".

    Needs the lake's pseudonymization key (LAKELOOP_PSEUDONYM_KEY or
    <home>/secrets/pseudonym.key). Safe to run again: a run cut short is
    finished by the next.

    Examples: `lakeloop forget --user-id u-123`;
    `echo u-123 | lakeloop forget --user-id - --json`;
    `lakeloop forget --vacuum-due`."""
    from features.erasure import forget as run
    from features.erasure import vacuum_due as run_due
    from orchestration.assets.curation.resources import pseudonym_key

    s = settings()
    if vacuum_due:
        if user_id is not None or vacuum_now:
            raise ConfigError("--vacuum-due erases no one", hint="run `lakeloop forget --user-id U` and `lakeloop forget --vacuum-due` separately")
        done = run_due(s, say=lambda m: None if as_json else say(m))
        if as_json:
            typer.echo(json.dumps([r.to_dict() for r in done], indent=2, sort_keys=True))
        elif not done:
            say("no erasure is due for its vacuum")
        return
    if user_id is None:
        raise ConfigError("whom to forget: --user-id is missing", hint="`lakeloop forget --user-id U` (or `--user-id -` to read it from stdin)")
    if user_id == "-":
        user_id = sys.stdin.readline().rstrip("\r\n")
    key = pseudonym_key(s)
    rec = run(s, user_id, key=key, vacuum_now=vacuum_now, say=lambda m: None if as_json else say(m))
    if as_json:
        typer.echo(json.dumps(rec.to_dict(), indent=2, sort_keys=True))
        return
    removed = ", ".join(f"{t} {n}" for t, n in rec.rows_removed.items() if n) or "none (nothing of theirs is in the current versions)"
    say(f"erasure {rec.erasure_id} of pseudonym {rec.pseudonym}: rows removed: {removed}")
    say(f"  models that learned from their rows (tagged lakeloop.contains_erased_data): {', '.join(rec.models) or 'none'}")
    if rec.unreadable_pins:
        say(f"  pinned versions that could not be read (not known whether they held the user): {'; '.join(rec.unreadable_pins)}")
    if rec.unparsed_dead_letters:
        say(f"  {rec.unparsed_dead_letters} dead letter(s) are not JSON and name no user_id: not examined")
    files = sum(len(p) for p in rec.files.values())
    if rec.vacuumed_at is not None:
        say(f"  vacuumed: {rec.files_vacuumed} file(s) deleted from storage")
    else:
        say(f"  {files} file(s) that held their rows are deleted from storage after {rec.vacuum_due.isoformat(timespec='seconds')} "
            "(`lakeloop forget --vacuum-due` or `lakeloop lake optimize`)")


def register(app: typer.Typer) -> None:
    app.command()(forget)
