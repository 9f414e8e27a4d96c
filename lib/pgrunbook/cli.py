"""`pgrunbook`: a thin command line over the runner, the archive and the sandbox.

Errors are one line on stderr and exit code 3 (UNKNOWN); `--debug` shows the
traceback. A run exits with its outcome: 0 OK, 1 WARN, 2 CRIT, 3 UNKNOWN or
failed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .base import config, targets
from .base.display import aligned, pretty_bytes
from .base.errors import ArchiveFailed, ConfigError, PgRunbookError, UnknownParameter
from .base.secrets import redact

USAGE_ERROR = 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 3, like every other bad input
        self.exit(USAGE_ERROR, f"pgrunbook: error: {message} (see `{self.prog} --help`)\n")


def _params(pairs: list[list[str]] | None) -> dict[str, str]:
    return {name: value for name, value in pairs or []}


def _progress(args) -> bool:
    """A progress bar only for a person at a terminal: never in cron's mail or a CI log."""
    return sys.stderr.isatty() and not args.quiet


def _day(value: str | None, option: str) -> str | None:
    """A YYYY-MM-DD option, refused in one line when it is not a date."""
    from datetime import date

    if value is None:
        return None
    try:
        date.fromisoformat(value)
    except ValueError:
        raise UnknownParameter(f"{option} {value!r} is not a date: give YYYY-MM-DD") from None
    return value


def cmd_run(args) -> int:
    from .archive import runner  # lazy: start-up time

    result = runner.run(
        args.runbook,
        args.target,
        _params(args.parameter),
        incident=args.incident,
        progress=_progress(args),
    )
    _print_result(result)
    return result.exit_code


def _print_result(result) -> None:
    for f in result.findings:
        print(f"  {f}")
    if result.stopped:
        print(f"  stopped {result.stopped}")
    if result.error:
        print(f"  FAILED  {result.error}")
    print(f"{result.runbook} on {result.target}: {result.outcome} in {result.duration_s:.1f} s")
    print(f"  report: {result.notebook}\n  html:   {result.html}")
    for what, path in result.written.items():
        print(f"  {what + ':':<7} {path}")
    for note in result.alerts:  # a channel down: the person at the console is the one told
        print(f"pgrunbook: {note}", file=sys.stderr)


def cmd_doctor(args) -> int:
    """Per target: its server's version and the client programs used with it (exit: the worst)."""
    from .base import db, pgtools  # lazy: start-up time
    from .base.findings import Status, worst
    from .checks import status  # lazy: start-up time

    found = {t.version for t in pgtools.installed("pg_dump")}
    where = ", ".join(pgtools.sources())
    print(f"client programs: pg_dump {', '.join(sorted(found)) or 'none'} (from {where})")
    verdicts = []
    for name in [args.target] if args.target else targets.names():
        try:
            target = targets.resolve(name)
            with db.connect(target, application="pgrunbook/doctor") as conn:
                version, verdict = db.server_version(conn), status.clients(conn)
            line = f"{name}: PostgreSQL {version}; {verdict.summary}"
        except PgRunbookError as e:
            if args.target:
                raise
            verdict, line = None, f"{name}: {redact(str(e))}"
        state = verdict.status if verdict else Status.UNKNOWN
        verdicts.append(state)
        print(f"  {state.name:<8}{line}")
    return worst(verdicts).value


def cmd_backups(args) -> int:
    """The backups of a target, wherever they live (`list`); `verify` restores one again from
    there; `repair` mends a repository from what it holds (repository.json, a manifest from its
    copy). One backup that cannot be read is named and the others go on."""
    import random

    from .base.findings import Status
    from .facts import backups  # lazy: start-up time
    from .procedures import restore

    if args.action == "repair":
        return _repair(args)
    if not args.target:
        raise UnknownParameter(f"backups {args.action} needs --target NAME")
    t = targets.resolve(args.target)
    found = backups.catalogue(t)
    if args.action == "list":
        rows = [
            (
                b.id,
                f"{b.end:%Y-%m-%d %H:%M} UTC",
                pretty_bytes(b.size),
                "verified" if b.verified else "FAILED verification" if b.failed else "not verified",
                "; ".join(b.notes + ("made by a drill: restored only by its id",) * b.drill),
            )  # fmt: skip
            for b in found.backups
        ] + [(u.id, "", "", "FAILED: cannot be used", u.why) for u in found.unreadable]
        print(aligned(rows, ("backup", "ended", "size", "state", "note")) if rows else
              f"no backups of {args.target}")  # fmt: skip
        if found.unreadable or found.mended:
            print(f"repair what a copy holds: pgrunbook backups repair --target {args.target}")
        return 1 if found.unreadable or found.mended else 0
    if not args.id:
        raise UnknownParameter("backups verify needs --id ID (or latest, or random)")
    if args.id == "random":
        if not found.backups:
            raise UnknownParameter(f"no backups of {args.target!r} to verify")
        chosen = random.choice(found.backups)
    else:
        try:
            chosen = backups.find(t, args.id)
        except backups.BackupUnreadable as e:
            print(f"FAILED  {e}")
            return 2
    verdict, _ = restore.verify(t, chosen)
    print(f"{verdict.status.name:<8}{chosen.id} ({chosen.location}): {verdict.summary}")
    return verdict.status.value if verdict.status is not Status.OK else 0


def _repair(args) -> int:
    """`backups repair`: repository.json made again where it is missing or damaged (the key
    proven on the backups there), and each manifest put back from its copy."""
    from .base import repository  # lazy: start-up time
    from .procedures import offsite

    if bool(args.repository) == bool(args.target):
        raise UnknownParameter("backups repair needs --target NAME or --repository URL")
    if args.target:
        url = repository.url_for(targets.resolve(args.target).name)
        if not repository.is_remote(url):
            raise UnknownParameter(
                f"{args.target!r} keeps its backups in a local folder: nothing to repair there"
            )
    else:
        url = args.repository
    repo = repository.Repository.open(url, lock_days=repository.lock_days_for(args.target))
    done = repo.repair() + offsite.mend_manifests(repo)
    for line in done:
        print(f"repaired: {line}")
    print(f"{repo.url}: {'repaired' if done else 'nothing to repair'}")
    return 0


def cmd_notify(args) -> int:
    """`test`: a test message to every channel (or one), and whether it was delivered;
    `status`: what was last alerted, per channel, target, runbook and check."""
    from .archive import alerts  # lazy: start-up time

    if args.action == "status":
        print("\n".join(alerts.status_lines()))
        return 0
    every = alerts.channels()
    chosen = [c for c in every if args.channel in (None, c.name)]
    if not every:
        raise UnknownParameter(
            "no alert channel is configured: add [notify.channels.NAME] with url_env (see"
            " docs/alerts.md), then test it again"
        )
    if not chosen:
        names = ", ".join(c.name for c in every)
        raise UnknownParameter(f"no channel {args.channel!r}: the channels are {names}")
    failed = 0
    for channel in chosen:
        why = alerts.send(channel, "pgrunbook test message",
                          f"A test from pgrunbook to the channel {channel.name!r}.")  # fmt: skip
        print(f"{channel.name}: {'delivered' if why is None else 'NOT delivered: ' + why}")
        failed += why is not None
    return 2 if failed else 0


WAL_ABORT = 126  # restore_command: an exit above 125 stops recovery instead of ending it there


def cmd_wal(args) -> int:
    """The server's archive_command (`push`) and restore_command (`fetch`) for a WAL archive in a
    bucket, and `check` (can this user reach it): one line on stderr (the server's log) and a
    non-zero exit on any failure, so the archiver retries; a segment the bucket gives damaged,
    or cannot give, stops recovery rather than being taken for the end of the archive."""
    from pathlib import Path

    from .base.repository import LOCK_ENV, Repository
    from .base.storage import Missing
    from .procedures.walstore import BucketArchive, pushed_ahead

    try:
        if args.action != "check" and not (args.file and (args.dest or args.action == "push")):
            raise UnknownParameter(f"wal {args.action} needs its file (see --help)")
        if args.action == "push" and args.spool and pushed_ahead(Path(args.file), Path(args.spool)):
            return 0
        lock = int(os.environ.get(LOCK_ENV) or 0)  # the command says it: see walstore.POINTERS
        repo = Repository.open(args.repository, lock_days=lock)
        archive = BucketArchive(repo, args.system, Path())
        if args.action == "check":
            archive.check()
            return 0
        if args.action == "push":
            archive.push(Path(args.file), Path(args.spool) if args.spool else None)
            return 0
        spool = Path(args.spool) if args.spool else None
        return 0 if archive.fetch(args.file, Path(args.dest), spool) else 1
    except Missing:
        return 1
    except (PgRunbookError, OSError) as e:
        line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"pgrunbook wal {args.action}: {redact(line)}", file=sys.stderr)
        return WAL_ABORT if args.action == "fetch" else 1


def cmd_cleanup(args) -> int:
    """List (or with --apply remove) what killed runs of the target left; never a kept database."""
    from .procedures import debris, swaps  # lazy: start-up time

    t = targets.resolve(args.target)
    if recovered := swaps.recover(t):
        print(recovered)
    left = debris.clean(t) if args.apply else debris.find(t)
    for item in left:
        print(f"{'removed' if args.apply else 'left'}: {item}")
    if not left:
        print(f"nothing left behind by earlier runs of {args.target}")
    elif not args.apply:
        print(f"remove with: pgrunbook cleanup --target {args.target} --apply")
    return 0 if args.apply or not left else 1


WIDTH = 100  # what `list` fits in where no terminal says its width


def cmd_list(args) -> int:
    """The runbooks, one entry each (name and the title of its purpose, wrapped, never cut);
    with a name, that runbook's purpose and parameters. Lines fit the terminal; words are never
    broken across lines."""
    import shutil
    import textwrap
    from functools import partial

    from .archive import runner  # lazy: start-up time

    width = min(WIDTH, shutil.get_terminal_size((WIDTH, 24)).columns)
    fill = partial(textwrap.fill, width=width, break_long_words=False, break_on_hyphens=False)
    if args.runbook:
        runner.notebook_path(args.runbook)  # an unknown name: refused with the nearest
        print(fill(f"{args.runbook}: {runner.title(args.runbook)}") + "\n")
        print(fill(runner.purpose(args.runbook)))
        print("\nparameters (-p NAME VALUE):")
        for p in runner.parameters(args.runbook).values():
            head = f"  {p.name} ({p.type}, default {p.default}): "
            print(fill(p.help, initial_indent=head, subsequent_indent=" " * 6))
        return 0
    names = runner.available()
    pad = max(map(len, names)) + 2
    for name in names:
        print(fill(runner.title(name), initial_indent=f"{name:<{pad}}",
                   subsequent_indent=" " * pad))  # fmt: skip
    print("\n`pgrunbook list RUNBOOK` shows one runbook's parameters")
    return 0


def cmd_reports(args) -> int:
    from .archive import reports, shared  # lazy: start-up time
    from .facts import history  # lazy: start-up time

    repo = shared.repository()  # a shared archive: read there
    if args.action == "site":
        from .archive import site  # lazy: start-up time

        if repo is not None:
            fetched = shared.mirror(repo)
            print(f"{fetched} reports fetched from {repo.url}", file=sys.stderr)
        print(
            f"the archive's pages: {site.build(full=True)} (open it in a browser, no server needed)"
        )
        return 0
    if args.action == "push":
        if repo is None:
            raise UnknownParameter(
                "reports push sends this host's waiting reports to the shared archive: set"
                ' reports = "s3://..." (or PGRUNBOOK_REPORTS) first'
            )
        shared.sync_index(repo)
        pushed, stays = shared.push(repo)
        for line in stays:
            print(f"still here: {line}")
        print(f"{len(pushed)} report(s) sent to {repo.url}; {len(stays)} still wait")
        return 2 if stays else 0
    if args.action == "verify":
        result = shared.verify(repo) if repo is not None else reports.verify()
        print("\n".join(result.lines()))
        return 0 if result.ok else 2
    if repo is not None:
        shared.sync_index(repo)
    if args.action == "show":
        from datetime import timedelta

        from .base.display import cell_text, pretty_duration

        d = history.details(args.ref)
        shown = {
            "id": d.get("id"), "runbook": d.get("runbook"), "target": d.get("target"),
            "server": d.get("server_version"), "outcome": d.get("outcome"),
            "error": d.get("error"), "incident": d.get("incident"),
            "operator": d.get("operator"), "host": d.get("host"),
            "started": cell_text(d.get("start")), "ended": cell_text(d.get("end")),
            "took": pretty_duration(timedelta(seconds=d["duration_s"]))
            if isinstance(d.get("duration_s"), (int, float)) else None,
            "parameters": " ".join(f"{k}={v}" for k, v in (d.get("parameters") or {}).items()),
        }  # fmt: skip
        for key, value in shown.items():
            if value not in (None, ""):
                print(f"{key + ':':<12}{value}")
        for f in d.get("findings", []):
            print(f"  {f['status']:<7} {f['check']}: {f['summary']}")
        root = config.settings().reports_dir
        files = d["files"]
        print(f"report: {root / files['ipynb']['path']}\nhtml:   {root / files['html']['path']}")
        return 0
    rows = history.select(
        runbook=args.runbook,
        target=args.target,
        outcome=args.outcome,
        incident=args.incident,
        since=_day(args.since, "--since"),
        until=_day(args.until, "--until"),
    )
    if not rows:
        print("no runs match")
        return 0
    print(reports.table(rows).fillna("").to_string(index=False))
    return 0


def cmd_sandbox(args) -> int:
    from .procedures.sandbox import Sandbox  # lazy: start-up time

    box = Sandbox.default()
    if args.action == "url":
        print(box.url(args.database))
        return 0
    if args.action == "down":
        box.down()
        print(f"sandbox stopped ({box.data_dir})")
        return 0
    if args.action == "up" and box.running:  # idempotent, as scripts need it
        print(f"the sandbox is already running ({box.data_dir})")
        print("\n".join(box.ensure().lines()))  # a database a newer version adds: created
        return 0
    if args.action in ("up", "reset"):
        print(
            f"{'resetting' if args.action == 'reset' else 'starting'} the sandbox in"
            f" {box.root} ...",
            file=sys.stderr,
        )
        st = box.up() if args.action == "up" else box.reset()
    else:
        st = box.status()
    print("\n".join(st.lines()))
    return 0


def cmd_seed(args) -> int:
    from .archive import runner  # lazy: start-up time

    given = {
        "mode": args.mode,
        "users": str(args.users),
        "random_seed": str(args.seed),
        "confirm": args.confirm,
    }
    result = runner.run("seed", args.target, given, progress=_progress(args))
    _print_result(result)
    return result.exit_code


def cmd_demo(args) -> int:
    from .archive import runner  # lazy: start-up time
    from .procedures.sandbox import Sandbox  # lazy: start-up time

    box = Sandbox.default()
    print(f"starting the sandbox in {box.root} ...", file=sys.stderr)
    print("\n".join(box.ensure().lines()))
    codes = []
    for runbook in ("status", "seed"):
        result = runner.run(runbook, "sandbox", progress=_progress(args))
        _print_result(result)
        codes.append(result.exit_code)

    print(f"\nreports are in {config.settings().reports_dir} (`pgrunbook reports list`)")
    return max(codes)


def cmd_lab(args) -> int:
    """JupyterLab on the runbooks folder; as root, with `--allow-root`, which JupyterLab
    otherwise refuses (a container's or a CI job's user is often root)."""
    import importlib.util  # lazy: start-up time

    if importlib.util.find_spec("jupyterlab") is None:
        raise ConfigError("JupyterLab is not installed here: pip install -e '.[lab]'")
    extra = args.jupyter_args[1:] if args.jupyter_args[:1] == ["--"] else args.jupyter_args
    command = [
        sys.executable,
        "-m",
        "jupyter",
        "lab",
        f"--notebook-dir={config.settings().runbooks_dir}",
    ]
    if os.geteuid() == 0 and "--allow-root" not in extra:
        command.append("--allow-root")
        print("running as root: JupyterLab is started with --allow-root", file=sys.stderr)
    sys.stdout.flush()
    os.execv(command[0], [*command, *extra])  # Lab's own process from here: signals, exit code
    return 0  # not reached


def cmd_migrations(args) -> int:
    from .archive import runner  # lazy: start-up time
    from .base import db, migrations  # lazy: alembic and SQLAlchemy (~360 ms)
    from .procedures import migrate  # lazy: start-up time

    t = targets.resolve(args.target)
    if args.action in ("deploy", "resolve"):
        given = {"mode": "apply", "to_revision": args.to, "confirm": args.confirm}
        if args.action == "resolve":
            if bool(args.applied) == bool(args.rolled_back):
                print(
                    "pgrunbook: error: resolve needs one of --applied REV or --rolled-back REV",
                    file=sys.stderr,
                )
                return USAGE_ERROR
            if migrations.history(t) is not None:  # Prisma's meaning: a failed one rolled back
                given = {
                    "mode": "resolve",
                    "stamp": args.applied or args.rolled_back,
                    "resolve_as": "applied" if args.applied else "rolled-back",
                    "confirm": args.confirm,
                }
            else:  # alembic: rolled back to before it, by stamping the revision below
                stamp = args.applied or migrate.down_revision(args.rolled_back)
                given = {"mode": "resolve", "stamp": stamp, "confirm": args.confirm}
        result = runner.run(
            "migrate", args.target, given, incident=args.incident, progress=_progress(args)
        )
        _print_result(result)
        return result.exit_code
    if args.action == "new":
        if not args.message:
            print("pgrunbook: error: `migrations new` needs a message", file=sys.stderr)
            return USAGE_ERROR
        print(migrate.new_revision(t, args.message))
        return 0
    if args.action == "reset":
        for f in migrate.reset(t):
            print(f"  {f}")
        return 0
    with db.connect(t, application="pgrunbook/migrations") as conn:
        st = migrations.status(conn, t)
        if args.action == "status":
            for f in migrate.status_findings(st):
                print(f"  {f}")
            return max(f.status.value for f in migrate.status_findings(st))
        if args.action == "plan":
            p = migrate.plan(st, args.to)
            print(migrate.plan_finding(p))
            for rev, script in p.scripts.items():
                print(f"-- revision {rev}\n{script}")
            return 2 if p.problem else 0
    if args.against:
        with db.connect(targets.resolve(args.against)) as a, db.connect(t) as b:
            from .facts import catalog  # lazy: start-up time

            diff = catalog.schema_difference(catalog.schema_facts(a), catalog.schema_facts(b))
        print(f"{args.target} against {args.against}: {len(diff)} differences")
    else:
        diff = migrate.drift(t, st.current).differences
        print(
            f"{args.target} against its migrations at {', '.join(st.current) or 'base'}:"
            f" {len(diff)} differences"
        )
    print("\n".join(f"  {d}" for d in diff))
    return 1 if diff else 0


def cmd_fleet(args) -> int:
    from .archive import fleet  # lazy: start-up time

    if args.action == "list":
        print(fleet.describe(args.name))
        return 0
    if not args.fleet:
        print("pgrunbook: error: `fleet run RUNBOOK` needs --fleet NAME", file=sys.stderr)
        return USAGE_ERROR
    result = fleet.run(
        args.name,
        args.fleet,
        _params(args.parameter),
        parallel=args.parallel,
        retries=args.retries,
        incident=args.incident,
    )
    for r in result.runs:
        where = r.html or r.error
        tries = f" ({r.attempts} attempts)" if r.attempts > 1 else ""
        print(f"  {r.outcome:<8}{r.target}: {where}{tries}")
    counts = ", ".join(f"{n} {o}" for o, n in result.counts().items() if n)
    print(f"{args.name} on fleet {args.fleet}: {counts}")
    if result.report is not None:
        print(f"  fleet report: {result.report.html}")
    return result.exit_code


def _wal_arguments(wl: argparse.ArgumentParser) -> None:
    wl.add_argument("action", choices=["push", "fetch", "check"])
    wl.add_argument("file", nargs="?", help="push: the segment's path (%%p); fetch: its name (%%f)")
    wl.add_argument("dest", nargs="?", help="fetch: where to write it (%%p)")
    wl.add_argument("--repository", required=True, help="the repository's URL")
    wl.add_argument("--system", required=True, help="the server's system identifier")
    wl.add_argument("--spool", help="a folder for the segments pushed or fetched ahead")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line; `wal`'s options and file names in any order (as a person types them
    and as the server's commands are written)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["wal"]:
        wl = _Parser(prog="pgrunbook wal")
        wl.add_argument("--debug", action="store_true")
        _wal_arguments(wl)
        parsed = wl.parse_intermixed_args(argv[1:], argparse.Namespace(command="wal", fn=cmd_wal))
    else:
        parsed = build_parser().parse_args(argv)
    parsed.argv = argv  # as typed: for messages that give the exact command back
    return parsed


def _confirmed(args: argparse.Namespace, name: str) -> str:
    """The command as it was typed, with the target's name as confirmation in the form that
    command takes (`-p confirm NAME` for a runbook, `--confirm NAME` for seed and migrations)."""
    import shlex

    words, kept, skip = list(args.argv), [], 0
    for n, word in enumerate(words):
        if skip:
            skip -= 1
        elif word == "--confirm" or (word == "-p" and words[n + 1 : n + 2] == ["confirm"]):
            skip = 1 if word == "--confirm" else 2  # a wrong confirmation is replaced
        elif word.startswith("--confirm="):
            continue
        else:
            kept.append(word)
    form = ["-p", "confirm", name] if args.command in ("run", "fleet") else ["--confirm", name]
    return "pgrunbook " + " ".join(shlex.quote(w) for w in [*kept, *form])


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pgrunbook", description="Operational runbooks for PostgreSQL.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    either = argparse.ArgumentParser(add_help=False)  # --debug before or after the subcommand
    either.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name: str, **options) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[either], **options)

    run = add("run", help="run a runbook against a target and archive the report")
    run.add_argument("runbook")
    run.add_argument(
        "--target", "-t", default="sandbox",
        help="environment name (sandbox, staging, ...; default: the sandbox, as `list` says)",
    )  # fmt: skip
    run.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"))
    run.add_argument("--incident", help="incident id to file the report under")
    run.add_argument(
        "--quiet",
        "--no-progress",
        dest="quiet",
        action="store_true",
        help="no progress bar (shown only on a terminal anyway)",
    )
    run.set_defaults(fn=cmd_run)

    ls = add("list", help="the runbooks; with a name, that runbook's parameters")
    ls.add_argument("runbook", nargs="?", help="one runbook: its purpose and parameters")
    ls.set_defaults(fn=cmd_list)

    fl = add("fleet", help="one runbook across a fleet of targets ([tool.pgrunbook.fleets])")
    fl.add_argument("action", choices=["list", "run"])
    fl.add_argument("name", help="with list: the fleet; with run: the runbook")
    fl.add_argument("--fleet", help="with run: the fleet to run it on")
    fl.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"))
    fl.add_argument("--parallel", type=int, help="runs at a time (default: the cores)")
    fl.add_argument(
        "--retries", type=int, default=2, help="retries of a target that cannot be reached"
    )
    fl.add_argument("--incident", help="incident id to file every report under")
    fl.set_defaults(fn=cmd_fleet)

    rep = add("reports", help="the archive of executed runbooks")
    rep.add_argument("action", choices=["list", "show", "verify", "site", "push"])
    rep.add_argument("ref", nargs="?", help="with show: a run id or report path")
    for opt in ("runbook", "target", "outcome", "incident"):
        rep.add_argument(f"--{opt}")
    rep.add_argument("--since", help="YYYY-MM-DD (UTC, inclusive)")
    rep.add_argument("--until", help="YYYY-MM-DD (UTC, inclusive)")
    rep.set_defaults(fn=cmd_reports)

    box = add("sandbox", help="the embedded PostgreSQL 18 sandbox")
    box.add_argument("action", choices=["up", "status", "url", "down", "reset"])
    box.add_argument(
        "database", nargs="?", default="production", help="with url: production, staging or sandbox"
    )
    box.set_defaults(fn=cmd_sandbox)

    seed = add("seed", help="seed a target (through the seed runbook, archived)")
    seed.add_argument("--target", "-t", default="sandbox")
    seed.add_argument("--mode", choices=["production", "development"], default="production")
    seed.add_argument("--users", type=int, default=0, help="development mode: users (0 = 1000)")
    seed.add_argument("--seed", type=int, default=1, help="development mode: random seed")
    seed.add_argument("--confirm", default="", help="the target's name, for a protected target")
    seed.add_argument(
        "--quiet",
        "--no-progress",
        dest="quiet",
        action="store_true",
        help="no progress bar (shown only on a terminal anyway)",
    )
    seed.set_defaults(fn=cmd_seed)

    mig = add("migrations", help="migration status, SQL, schema diff, deploy, new, reset, resolve")
    mig.add_argument(
        "action", choices=["status", "plan", "diff", "deploy", "new", "reset", "resolve"]
    )
    mig.add_argument("message", nargs="?", help="with new: the revision's message")
    mig.add_argument("--target", "-t", default="sandbox")
    mig.add_argument("--to", default="head", help="with plan and deploy: the revision to reach")
    mig.add_argument("--against", help="with diff: a second target to compare with")
    mig.add_argument("--applied", help="with resolve: record this revision as applied")
    mig.add_argument("--rolled-back", help="with resolve: record this revision as rolled back")
    mig.add_argument("--confirm", default="", help="the target's name, for a protected target")
    mig.add_argument("--incident")
    mig.add_argument(
        "--quiet",
        "--no-progress",
        dest="quiet",
        action="store_true",
        help="no progress bar (shown only on a terminal anyway)",
    )
    mig.set_defaults(fn=cmd_migrations)

    bk = add(
        "backups",
        help="a target's backups, wherever they live; verify one again; repair a repository",
    )
    bk.add_argument("action", choices=["list", "verify", "repair"])
    bk.add_argument("--target", "-t")
    bk.add_argument("--id", help="with verify: a backup id, latest, or random (restore-test one)")
    bk.add_argument("--repository", help="with repair: a repository's URL (instead of --target)")
    bk.set_defaults(fn=cmd_backups)

    wl = add("wal", help="archive_command and restore_command for a WAL archive in a bucket")
    _wal_arguments(wl)
    wl.set_defaults(fn=cmd_wal)

    nt = add("notify", help="alert channels: send a test message, or show what was alerted")
    nt.add_argument("action", choices=["test", "status"])
    nt.add_argument("--channel", help="with test: one channel (default: every one)")
    nt.set_defaults(fn=cmd_notify)

    doc = add("doctor", help="per target: server version and the client programs used with it")
    doc.add_argument("--target", "-t", help="one target (default: every configured one)")
    doc.set_defaults(fn=cmd_doctor)

    clean = add(
        "cleanup",
        help=(
            "what killed runs left (scratch databases, partial backups): "
            "listed, removed with --apply"
        ),
    )
    clean.add_argument("--target", "-t", required=True)
    clean.add_argument("--apply", action="store_true", help="remove what is listed")
    clean.set_defaults(fn=cmd_cleanup)

    lab = add(
        "lab",
        help="JupyterLab on the runbooks (as root too); what follows -- goes to jupyter lab",
    )
    lab.add_argument("jupyter_args", nargs=argparse.REMAINDER, help="e.g. -- --port 9999")
    lab.set_defaults(fn=cmd_lab)

    demo = add("demo", help="start the sandbox and run the status and seed runbooks")
    demo.add_argument(
        "--quiet",
        "--no-progress",
        dest="quiet",
        action="store_true",
        help="no progress bar (shown only on a terminal anyway)",
    )
    demo.set_defaults(fn=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    os.umask(
        0o077
    )  # dumps, reports and their temporaries hold production data: the operator's alone
    if args.command == "reports" and args.action == "show" and not args.ref:
        print(
            "pgrunbook: error: `reports show` needs a run id (see `pgrunbook reports list`)",
            file=sys.stderr,
        )
        return USAGE_ERROR
    try:
        return args.fn(args)
    except ArchiveFailed as e:  # the run happened: not bad input
        print(f"pgrunbook: error: {e}", file=sys.stderr)
        return 2
    except PgRunbookError as e:
        if args.debug:
            raise
        said = redact(str(e))
        if name := getattr(e, "confirm_target", ""):  # the exact command that confirms
            said += f": run `{_confirmed(args, name)}`"
        print(f"pgrunbook: error: {said}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("pgrunbook: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `pgrunbook ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit's flush
        return 141  # as a program ended by SIGPIPE (git, grep)
    except Exception as e:
        if args.debug:
            raise
        first = redact(str(e)).strip().splitlines()[0] if str(e).strip() else ""
        print(
            f"pgrunbook: error: {type(e).__name__}: {first} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
