"""Restore to a moment: a verified base backup copied (or fetched from the bucket) into a
folder of its own, replayed from the archive to the moment asked for in a cluster of its own (its
own socket, archive_mode off so it never writes into the archive), promoted there, and handed
back to be verified; a table copied back from it. The running cluster is never touched. Where
the WAL and base backups are is `walstore`'s; the server and its archiving, `pitr`'s.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from ..base import db, pgrestore, pgtools
from ..base.display import timestamp
from ..base.errors import PgRunbookError
from ..base.fileio import private_dir, socket_dir
from ..base.findings import Finding, Status
from ..base.sealing import Damaged
from ..base.storage import StorageError
from ..base.targets import Target
from ..facts import catalog, wal
from . import restore as restoring
from .pitr import (
    META,
    PitrFailed,
    PitrRefused,
    Server,
    pg_ctl,
    restore_points,
    switch_and_wait,
    verify_base,
)

_LSN = re.compile(r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$")


# -- restore to a moment -----------------------------------------------------------------


@dataclass(frozen=True)
class Moment:
    kind: str  # time, lsn, xid, name, latest
    value: str

    @classmethod
    def parse(cls, *, time: str = "", lsn: str = "", xid: str = "", name: str = "") -> Moment:
        given = [(k, v.strip()) for k, v in (("time", time), ("lsn", lsn), ("xid", xid),
                                             ("name", name)) if str(v).strip()]  # fmt: skip
        if len(given) > 1:
            raise PitrRefused(
                f"name one moment to restore to, not {len(given)}: "
                f"{', '.join('to_' + k for k, _ in given)}"
            )
        if not given:
            return cls("latest", "")
        kind, value = given[0]
        if kind == "time":
            try:
                when = datetime.fromisoformat(value)
            except ValueError:
                raise PitrRefused(
                    f"to_time {value!r} is not a time: write it as 2026-11-25T10:42:00+00:00"
                ) from None
            if when.tzinfo is None:
                raise PitrRefused(
                    f"to_time {value!r} has no time zone: add one, e.g. {value}+00:00"
                )
            value = when.isoformat()
        elif kind == "lsn" and not _LSN.match(value):
            raise PitrRefused(f"to_lsn {value!r} is not an LSN such as 0/3000060")
        elif kind == "xid" and not value.isdigit():
            raise PitrRefused(f"to_xid {value!r} is not a transaction id (a number)")
        return cls(kind, value)

    @property
    def time(self) -> datetime | None:
        return datetime.fromisoformat(self.value) if self.kind == "time" else None

    def settings(self) -> list[tuple[str, str]]:
        if self.kind == "latest":
            return [("recovery_target", "")]
        return [(f"recovery_target_{self.kind}", self.value), ("recovery_target_action", "promote")]

    def __str__(self) -> str:
        return "the end of the archive" if self.kind == "latest" else f"{self.kind} {self.value}"


def chain_of(server: Server, base: wal.BaseBackup) -> list[wal.BaseBackup]:
    """The full base backup and the incrementals up to `base`, oldest first."""
    by_id = {b.id: b for b in server.archive.base_backups()}
    chain = [base]
    while chain[0].incremental_of:
        parent = by_id.get(chain[0].incremental_of)
        if parent is None:
            raise PitrFailed(
                f"base backup {chain[0].id} is incremental on {chain[0].incremental_of}, which is "
                "gone: restore from an older full one"
            )
        chain.insert(0, parent)
    return chain


def _lsn(value: str) -> int:
    hi, lo = value.split("/")
    return (int(hi, 16) << 32) + int(lo, 16)


def choose_base(server: Server, moment: Moment) -> wal.BaseBackup:
    """The newest verified base backup a restore to `moment` can start from."""
    every = server.archive.base_backups()
    if not every:
        raise PitrRefused(
            f"no base backup of this server yet ({server.archive.where}): run the pitr runbook"
            " to take one"
        )
    earliest = every[0].finished_at
    if moment.kind == "time":
        fit = [b for b in every if b.finished_at <= moment.time]
        if not fit:
            raise PitrRefused(
                f"{moment.value} is before the oldest base backup: the earliest reachable moment "
                f"is {earliest.isoformat()}"
            )
        return fit[-1]
    if moment.kind in ("name", "lsn"):
        lsn, what = moment.value, f"LSN {moment.value}"
        if moment.kind == "name":
            points = [p for p in restore_points(server) if p["name"] == moment.value]
            if not points:
                return every[0]  # not recorded here: the oldest base reaches it if anything does
            lsn, what = points[-1]["lsn"], f"restore point {moment.value!r}"
        fit = [b for b in every if _lsn(b.end_lsn) <= _lsn(lsn)]
        if not fit:
            raise PitrRefused(
                f"{what} is before the oldest base backup: the earliest reachable moment is "
                f"{every[0].end_lsn} ({earliest.isoformat()})"
            )
        return fit[-1]
    return every[0] if moment.kind == "xid" else every[-1]


@dataclass
class Recovered:
    """A cluster restored to a moment, running beside the original on a socket of its own."""

    server: Server
    base: wal.BaseBackup
    moment: Moment
    folder: Path
    socket_dir: Path
    port: int
    url_params: dict = field(repr=False)
    reached: str = ""  # what the server's log says it stopped at
    last_transaction_at: datetime | None = None
    timeline_id: int | None = None
    phases: restoring.Timeline = field(default_factory=restoring.Timeline)

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log(self) -> Path:
        return self.folder / "server.log"

    def url(self, database: str) -> str:
        return make_conninfo("", **{**self.url_params, "dbname": database})

    def target(self, database: str) -> Target:
        return Target(f"restored-{self.folder.name}", self.url(database), sandbox=False)

    def stop(self, *, remove: bool = True) -> None:
        if (self.data / "postmaster.pid").exists():
            pg_ctl(self.server, ["-w", "-m", "fast", "stop"], data=self.data)
        if remove:
            shutil.rmtree(self.data, ignore_errors=True)
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    def finding(self) -> Finding:
        when = (
            f"; last transaction replayed committed at {timestamp(self.last_transaction_at)}"
            if self.last_transaction_at
            else ""
        )
        return Finding(
            "moment reached",
            Status.OK,
            f"{self.reached or self.moment} on timeline {self.timeline_id}, from base backup "
            f"{self.base.id}{when}",
            value=self.last_transaction_at.isoformat() if self.last_transaction_at else None,
        )


def _log_time(text: str) -> datetime | None:
    try:
        return datetime.strptime(text.strip(), "%Y-%m-%d %H:%M:%S.%f%z")
    except ValueError:
        try:
            return datetime.fromisoformat(text.strip())
        except ValueError:
            return None


_UNREADABLE = re.compile(
    r"invalid record|incorrect resource manager data checksum|invalid magic number|"
    r"unexpected pageaddr|contrecord|invalid info bits|invalid resource manager"
)


def _stopped_where(log: str, folder: str, server: Server) -> str:
    """Why replay ended before the moment: the segment missing from the archive, if one is."""
    if fetched := re.findall(r"pgrunbook wal fetch: (.+)", log):
        return fetched[-1].strip()  # a segment the bucket gave damaged, or could not give
    restored = re.findall(r'restored log file "([0-9A-F]{24})" from archive', log)
    present = server.archive.segments()
    last = restored[-1] if restored else None
    if last:
        nxt = wal.segment_name(
            int(last[:8], 16), wal.segment_number(last, server.segment_size) + 1,
            server.segment_size,
        )  # fmt: skip
        later = [s for s in present if s[8:] > nxt[8:]]
        if nxt not in present and later:
            return (
                f"replay stopped at the gap: WAL segment {nxt} is missing from the archive "
                f"({folder}); the last one replayed is {last}"
            )
        if nxt in present:  # the archive goes on: replay could not read a record of `last`
            bad = [x.split(":  ", 1)[-1] for x in log.splitlines() if _UNREADABLE.search(x)]
            return (
                f"replay stopped in WAL segment {last}, though the archive holds the ones after "
                f"it: the segment is damaged ({bad[-1] if bad else 'a record could not be read'})"
                "; restore to a moment before it, or put back a good copy of the segment"
            )
        return f"the archive ends at {last}: the moment is past the newest archived WAL"
    fatal = [x for x in log.splitlines() if "FATAL" in x or "PANIC" in x]
    return fatal[-1].split(":  ", 1)[-1] if fatal else "the server stopped during recovery"


def restore(
    target: Target,
    server: Server,
    moment: Moment,
    *,
    database: str | None = None,
    verify_base_first: bool = True,
    timeout_s: float = 3600,
) -> Recovered:
    """Restore the target's server to `moment` in a new cluster beside it, replayed from the
    archive and promoted there. Raises PitrFailed (nothing promoted, the half-restored folder
    removed, its log kept) when replay cannot reach the moment."""
    if moment.time and moment.time > datetime.now(UTC):
        raise PitrRefused(f"{moment.value} is in the future: name a moment that has passed")
    base = choose_base(server, moment)
    with db.connect(target, application="pgrunbook/pitr") as conn:
        state = wal.archiving(conn)
    folder_wal = server.archive.where
    phases = restoring.Timeline()
    end_mark = None
    if state.on:
        with phases.phase("archive the current WAL"):
            if moment.kind == "latest":
                end_mark = _mark_the_end(target)
            switch_and_wait(target)  # the archive then holds everything committed until now
    if moment.kind == "latest":  # no target to miss: replay would end at a gap and promote
        missing = wal.gaps(
            server.archive.segments(), since=base.start_wal, segment_size=server.segment_size
        )
        if missing:
            raise PitrFailed(
                f"restore to {moment} refused, nothing was started: WAL segment {missing[0]} is "
                f"missing from the archive ({folder_wal}); replay would stop there and lose what "
                "follows. Restore to a moment before it, or put the segment back"
            )
    chain = chain_of(server, base)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    folder = private_dir(server.root / "restores" / stamp)
    data = folder / "data"
    # pg_verifybackup reads the base backup while it is copied (the same files, from the same
    # page cache): nothing starts until both are done, and a failed verification removes the copy
    checked = " while pg_verifybackup checks it" if verify_base_first else ""
    stop = threading.Event()
    fetched = bool(base.parts)  # from a bucket: checked once it is here
    with ThreadPoolExecutor(max_workers=1) as checker:
        early = chain if verify_base_first and not fetched else []
        verifying = checker.submit(_verify_chain, server, early, stop)
        try:
            if fetched:
                with phases.phase(f"fetch the base backup from {server.archive.where}"):
                    server.archive.unpack(base, data)
                if verify_base_first:
                    with phases.phase("check it with pg_verifybackup"):
                        verify_base(server, data, name=base.id)
            elif len(chain) == 1:
                with phases.phase(f"copy the base backup{checked}"):
                    server.archive.unpack(base, data)
                    verifying.result()
            else:
                with phases.phase(f"combine the incremental backups{checked}"):
                    combine = pgtools.choose("pg_combinebackup", server.major)
                    links = [str(link.path) for link in chain]
                    args = [str(combine.path), *links, "-o", str(data)]
                    done = subprocess.run(args, capture_output=True, text=True, timeout=3600)
                    verifying.result()
                    if done.returncode != 0:
                        raise PitrFailed(f"pg_combinebackup failed: {done.stderr.strip()[-300:]}")
                    (data / META).unlink(missing_ok=True)
        except BaseException as e:
            stop.set()
            shutil.rmtree(folder, ignore_errors=True)
            if isinstance(e, PgRunbookError) and not isinstance(e, PitrFailed):
                raise PitrFailed(f"base backup {base.id} could not be fetched: {e}") from None
            raise
    (data / "backup_manifest").unlink(missing_ok=True)
    sockets = Path(socket_dir("pgrb-", ".s.PGSQL.5432.lock"))
    port = 5432
    params = dict(target.params)
    params.update(host=str(sockets), port=str(port))
    params.pop("hostaddr", None)
    params.pop("service", None)
    settings = [
        ("restore_command", server.archive.restore_command(folder / "spool")),
        ("recovery_target_timeline", "current"),
        # the end of the archive, marked: replay that stops short of the mark (a corrupted
        # segment reads as the end of the WAL) fails instead of promoting what it has
        *(
            [("recovery_target_name", end_mark), ("recovery_target_action", "promote")]
            if end_mark
            else moment.settings()
        ),
        ("archive_mode", "off"),  # a restored copy never writes into the archive
        ("summarize_wal", "off"),
        ("listen_addresses", ""),
        ("port", str(port)),
        ("unix_socket_directories", str(sockets)),
        ("hot_standby", "on"),
        ("logging_collector", "off"),
    ]
    with (data / "postgresql.auto.conf").open("a") as f:
        f.write("\n# restored by pgrunbook\n")
        for name, value in settings:
            f.write(f"{name} = '{value}'\n")
    (data / "recovery.signal").write_text("")
    (data / "standby.signal").unlink(missing_ok=True)
    os.chmod(data, 0o700)
    server.give(folder)
    server.give(sockets)
    recovered = Recovered(server, base, moment, folder, sockets, port, params, phases=phases)
    try:
        with phases.phase("replay the archive and promote"):
            pg_ctl(server, ["-w", "-t", str(int(timeout_s)), "start"], data=data, log=recovered.log)
            _wait_promoted(recovered, database or target.database, timeout_s)
    except (PitrFailed, psycopg.Error, subprocess.TimeoutExpired) as e:
        log = recovered.log.read_text() if recovered.log.exists() else ""
        try:
            recovered.stop(remove=True)
        except PitrFailed:
            pass
        why = _stopped_where(log, folder_wal, server) if log else str(e)
        raise PitrFailed(
            f"restore to {moment} did not complete, nothing was promoted: {why} "
            f"(server log: {recovered.log})"
        ) from None
    _read_outcome(recovered)
    return recovered


def _verify_chain(server: Server, chain: list[wal.BaseBackup], stop: threading.Event) -> None:
    """pg_verifybackup over a chain of base backups; once `stop` is set, the one under check
    finishes and no other is checked."""
    for link in chain:
        if stop.is_set():
            return
        verify_base(server, link.path)


def _mark_the_end(target: Target) -> str | None:
    """A restore point at the end of the WAL, before it is switched and archived: a restore to
    the end of the archive targets it, so replay must get there. Without the right to make one
    (superuser or a grant), None: replay then ends where the archive's WAL does."""
    name = f"pgrunbook-end-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"
    try:
        with db.connect(target, readonly=False, application="pgrunbook/pitr") as conn:
            conn.execute("SELECT pg_create_restore_point(%s)", [name])
    except psycopg.Error:
        return None
    return name


def _wait_promoted(recovered: Recovered, database: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not (recovered.data / "postmaster.pid").exists():
            raise PitrFailed("the server stopped during recovery")
        try:
            with psycopg.connect(recovered.url(database), autocommit=True, connect_timeout=5) as c:
                if not c.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                    return
        except psycopg.OperationalError:
            pass
        time.sleep(0.1)
    raise PitrFailed(f"replay did not finish within {timeout_s:.0f} s")


_LOGGED_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?[+-]\d\d(?::?\d\d)?")


def _in_utc(text: str) -> str:
    """The server log's times (`2026-12-06 10:10:49.934438+00`) as reports write them."""
    return _LOGGED_TIME.sub(lambda m: timestamp(datetime.fromisoformat(m[0])), text)


def _read_outcome(recovered: Recovered) -> None:
    log = recovered.log.read_text()
    if m := re.findall(r"recovery stopping (.+?)(?:\n|$)", log):
        recovered.reached = "stopped " + _in_utc(m[-1].strip())
    elif recovered.moment.kind == "latest":
        recovered.reached = "replayed to the end of the archive"
    if m := re.findall(r"last completed transaction was at log time (.+?)(?:\n|$)", log):
        recovered.last_transaction_at = _log_time(m[-1])
    if m := re.findall(r"selected new timeline ID: (\d+)", log):
        recovered.timeline_id = int(m[-1])


def copy_table_back(recovered: Recovered, target: Target, table: str) -> Finding:
    """Bring one table back from the restored cluster into the target, as it was at the moment
    (pg_dump of that table, pg_restore into the target). Refused if the target still has it."""
    with db.connect(target, application="pgrunbook/pitr") as conn:
        if conn.execute("SELECT to_regclass(%s)", [table]).fetchone()[0] is not None:
            raise PitrRefused(
                f"{table!r} still exists in {target.name!r}: drop or rename it first, or copy the "
                "rows you need from the restored cluster"
            )
        dumper = pgtools.choose("pg_dump", recovered.server.major)
        way = pgrestore.restorer_for(conn, made_by=dumper.major)
    dump = recovered.folder / "table.dump"
    source = recovered.url(target.database)
    pgtools.run(dumper, ["-Fc", "-t", table, "-f", str(dump)], source)
    way.run(dump, target.url)
    dump.unlink()
    with db.connect(target, application="pgrunbook/pitr") as conn:
        rows = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(*table.split(".", 1)))
        ).fetchone()[0]
    return Finding(
        "table back",
        Status.OK,
        f"{table} copied back into {target.name!r}: {rows} rows",
        value=rows,
    )


# -- what the runbooks call --------------------------------------------------------------


def restore_checked(
    target: Target, server: Server, moment: Moment, *, database: str | None = None
) -> tuple[Recovered | None, Finding]:
    """`restore`, with its failure as a CRIT finding (nothing was promoted)."""
    try:
        recovered = restore(target, server, moment, database=database)
    except (PitrFailed, pgtools.ToolFailed, StorageError, Damaged) as e:
        return None, Finding("restore", Status.CRIT, str(e))
    return recovered, recovered.finding()


def verify(recovered: Recovered, database: str) -> list[Finding]:
    """The restored database checked as a restored dump is: amcheck on its btree indexes, its
    foreign keys, unique keys and sequences, and its row counts."""
    from ..checks import integrity  # here: spares the integrity checks at start-up

    with db.connect(
        recovered.target(database), readonly=False, statement_timeout="30min",
        application="pgrunbook/pitr",
    ) as conn:  # fmt: skip
        found = [restoring.amcheck_finding(conn)]
        found += integrity.foreign_keys(conn)
        found += integrity.unique_keys(conn)
        found += integrity.sequences(conn)
        counts = catalog.row_counts(conn)
    found.append(
        Finding(
            "row counts",
            Status.OK,
            f"{len(counts)} tables, {sum(counts.values()):,} rows in {database!r} as restored",
            value=sum(counts.values()),
        )
    )
    return found


def finish(recovered: Recovered | None, *, keep_running: bool = False) -> Finding:
    """Stop and remove the restored cluster, or leave it running for inspection."""
    if recovered is None:
        return Finding("restored cluster", Status.OK, "none running")
    if keep_running:
        return Finding(
            "restored cluster",
            Status.OK,
            f"left running in {recovered.data} (socket {recovered.socket_dir}, port "
            f"{recovered.port}); stop it with: pg_ctl -D {recovered.data} stop",
        )
    recovered.stop(remove=True)
    return Finding("restored cluster", Status.OK, f"stopped and removed ({recovered.folder.name})")


def check_copy(target: Target, table: str, *, confirm: str = "") -> None:
    """Refuse, before anything starts, a copy back that cannot be done: a protected target
    without its confirm, or a table the target still has."""
    if not table:
        return
    target.require_confirm(confirm, action=f"copying table {table!r} back")
    with db.connect(target, application="pgrunbook/pitr") as conn:
        if conn.execute("SELECT to_regclass(%s)", [table]).fetchone()[0] is not None:
            raise PitrRefused(
                f"{table!r} still exists in {target.name!r}: copy_table brings back a table that "
                "is gone; drop or rename it first, or read its rows from a restored cluster left "
                "running (keep_running)"
            )


def copy_back(recovered: Recovered, target: Target, table: str) -> Finding:
    """`copy_table_back` when a table was named; its failure is CRIT."""
    if not table:
        return Finding("table back", Status.OK, "none asked for (copy_table)")
    try:
        return copy_table_back(recovered, target, table)
    except (PitrRefused, pgtools.ToolFailed) as e:
        return Finding("table back", Status.CRIT, f"{table} was not copied back: {e}")
