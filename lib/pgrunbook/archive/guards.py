"""What each runbook refuses before it starts: checked by the runner, before any kernel or file.

A refusal raises a `PgRunbookError` (one line, exit 3, nothing written): a
missing confirm on a protected target, a procedure the target is not
configured for, a backup, table or folder that does not exist. The runbooks
call the same checks in their first step, so plain papermill and JupyterLab
refuse the same things. Each rule imports the procedure it asks, so a run
of another runbook does not pay for importing it.
"""

from __future__ import annotations

from typing import Any

import psycopg

from ..base import config, targets
from ..base.errors import ConfirmationRequired, PgRunbookError, UnknownParameter
from ..base.targets import Target


class NotConfigured(PgRunbookError):
    "The target is not configured for what the runbook would do"


def migrate(target: Target, v: dict[str, Any], conn: psycopg.Connection) -> None:
    from ..base import (
        migrations,
    )  # alembic and SQLAlchemy: imported only for the runbook that needs them

    if (h := migrations.history(target)) is not None:
        h.migrations()  # a missing or foreign folder is bad configuration: refused here
    if v["mode"] in ("apply", "resolve", "rehearse") and not migrations.managed(target, conn):
        raise NotConfigured(
            f"target {target.name!r} is not managed by the migrations in migrations/ "
            f"(no alembic_version table, no app with migrations): {v['mode']} refused; "
            'set app = "NAME" on the target if it is'
        )
    if v["mode"] in ("apply", "resolve"):
        target.require_confirm(v["confirm"], action=f"migrate in {v['mode']} mode")


def restore(target: Target, v: dict[str, Any], conn: psycopg.Connection) -> None:
    from ..facts import backups  # lazy: start-up time
    from ..procedures import restore as restoring  # lazy: start-up time

    not_busy(target)
    backup = backups.find(
        target, v["backup"], current=backups.identity(conn, target)
    )  # one that does not exist: bad input
    restoring.check_versions(backup, conn.info.server_version, target)
    target.require_confirm(v["confirm"], action=f"a restore ({v['mode']})")


def not_busy(target: Target) -> None:
    """Refuse while another restore or refresh of the same database runs (it holds the lock)."""
    from ..procedures import swaps  # lazy: start-up time

    if holder := swaps.busy(target):
        raise swaps.Busy(holder)


def seed(target: Target, v: dict[str, Any], conn: psycopg.Connection) -> None:
    from ..procedures import seed as seeding  # lazy: start-up time

    if not target.app.seed:
        raise NotConfigured(
            f"target {target.name!r} has no app whose schema the seed fits (Fixia's): "
            "the seed runbook is for the demo application's targets"
        )
    seeding.check(target, mode=v["mode"], users=v["users"], confirm=v["confirm"])


def staging_refresh(target: Target, v: dict[str, Any], conn: psycopg.Connection) -> None:
    from ..facts import backups  # lazy: start-up time
    from ..procedures import refresh, sanitize  # lazy: start-up time

    source = targets.resolve(v["source"])
    refresh.check_request(source, target, mode=v["mode"], confirm=v["confirm"])
    if v["rules"] and not sanitize.rules_path(v["rules"]).is_file():
        raise UnknownParameter(
            f"rules file {v['rules']!r} does not exist: give a TOML file of masking rules"
        )
    rules = sanitize.for_refresh(source, target, v["rules"])  # an invalid file: one line here
    if v["mode"] == "apply":
        sanitize.require_written(rules, target.name)
        refresh.check_versions(source, target, conn, v["source_backup"])
        not_busy(target)
    elif v["source_backup"] not in ("new", "latest"):
        backups.find(source, v["source_backup"])


def dr_drill(target: Target, v: dict[str, Any], conn: psycopg.Connection) -> None:
    from ..procedures import drill  # lazy: start-up time

    drill.check_target(target, v["disaster"])
    if v["disaster"] == drill.PITR:
        from ..facts import wal  # lazy: start-up time
        from ..procedures import pitr as recovery  # lazy: start-up time

        recovery.require_powers(conn, target, archiving_on=True)
        recovery.locate(target)  # a server whose files are out of reach: refused here
        if not wal.archiving(conn).on:
            raise recovery.PitrRefused(
                f"{drill.PITR} needs continuous WAL archiving on {target.name!r}'s server: run "
                "the pitr runbook first"
            )
    if (
        v["disaster"] != "dropped-database"
        and not conn.execute("SELECT to_regclass(%s) IS NOT NULL", [v["table"]]).fetchone()[0]
    ):
        raise UnknownParameter(
            f"table {v['table']!r} does not exist in {target.name!r}: "
            "name a table of the target with -p table (schema.table off the search_path)"
        )


def integrity(target: Target, v: dict[str, Any], conn: psycopg.Connection) -> None:

    other = targets.resolve(v["compare_to"]) if v["compare_to"] else None
    if v["show_values"] and (target.protected or (other is not None and other.protected)):
        protected = target.name if target.protected else other.name
        raise ConfirmationRequired(
            f"show_values is refused with protected target {protected!r}: its personal data would "
            "be written into the report; compare without it (values show as tokens)"
        )
    chosen = {c.strip() for c in v["checks"].split(",")}
    if "compare" in chosen and not v["compare_to"]:
        raise UnknownParameter("checks=compare needs a second target: add -p compare_to TARGET")
    if v["compare_to"] and "all" not in chosen and "compare" not in chosen:
        raise UnknownParameter(
            f"compare_to={v['compare_to']!r} is given but checks={v['checks']!r} leaves the "
            "comparison out: add compare to checks (-p checks compare for the comparison alone)"
        )
    if v["checks_dir"] and not config.project_path(v["checks_dir"]).is_dir():
        raise UnknownParameter(
            f"checks_dir {v['checks_dir']!r} is not a folder: give a folder of *.sql "
            "assertion files, or leave it empty for the target's configured ones"
        )


def health(target: Target, v: dict[str, Any], conn: psycopg.Connection) -> None:
    from ..checks import health as checks  # lazy: start-up time

    checks.output_path("prometheus_file", v["prometheus_file"])
    checks.output_path("json_file", v["json_file"])


def pitr(target: Target, v: dict[str, Any], conn: psycopg.Connection) -> None:
    from ..facts import wal  # lazy: start-up time
    from ..procedures import pitr as recovery  # lazy: start-up time

    if v["incremental"] and conn.info.server_version < 170000:
        raise UnknownParameter(
            f"incremental base backups need PostgreSQL 17 or newer; {target.name!r} runs "
            f"{conn.info.server_version // 10000}: leave incremental off"
        )
    recovery.require_powers(conn, target, archiving_on=wal.archiving(conn).on)


def pitr_restore(target: Target, v: dict[str, Any], conn: psycopg.Connection) -> None:
    from datetime import UTC, datetime

    from ..procedures import moments  # lazy: start-up time
    from ..procedures import pitr as recovery  # lazy: start-up time

    moment = moments.Moment.parse(
        time=v["to_time"], lsn=v["to_lsn"], xid=v["to_xid"], name=v["to_name"]
    )
    if moment.time and moment.time > datetime.now(UTC):
        raise recovery.PitrRefused(
            f"{moment.value} is in the future: name a moment that has passed"
        )
    moments.check_copy(target, v["copy_table"], confirm=v["confirm"])
    try:
        server = recovery.locate(target)
    except recovery.PitrUnavailable:
        return  # not bad input: the run says so (UNKNOWN)
    moments.choose_base(server, moment)  # before the oldest base backup: the earliest is named


def fleet_report(target: Target | None, v: dict[str, Any], conn: Any) -> None:
    from ..facts import history  # lazy: start-up time

    history.fleet_run(v["fleet_run"])  # a fleet run that was never recorded: bad input


def backup(target: Target, v: dict[str, Any], conn: psycopg.Connection) -> None:
    from ..base import repository  # lazy: start-up time

    repo = repository.for_target(target)  # out of reach, no key, a wrong key: one line
    if repo is not None:
        repo.may_write()  # a repository to repair first: one line, before pg_dump


RULES = {
    "backup": backup,
    "fleet_report": fleet_report,
    "health": health,
    "migrate": migrate,
    "restore": restore,
    "seed": seed,
    "staging_refresh": staging_refresh,
    "dr_drill": dr_drill,
    "integrity": integrity,
    "pitr": pitr,
    "pitr_restore": pitr_restore,
}


def before_run(
    runbook: str, target: Target | None, values: dict[str, Any], conn: psycopg.Connection | None
) -> None:
    """Refuse (raise) what `runbook` must not start with these parameter `values` on `target`."""
    rule = RULES.get(runbook)
    if rule is not None:
        rule(target, values, conn)
