"""Migrations tried on scratch databases beside the target: drift (the live schema against the
migrations' own) and rehearsal (the plan applied to a copy)."""

from __future__ import annotations

import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from ...base import db, migrations, pgrestore, pgtools
from ...base.findings import Finding, Status
from ...base.targets import Target
from ...facts import catalog
from .. import admin, debris
from .planning import Plan, root_cause


@dataclass
class Drift:
    finding: Finding
    differences: list[str]

    def table(self):
        import pandas as pd  # here: spares pandas (~270 ms) at start-up

        return pd.DataFrame({"difference": self.differences})


def scratch_target(target: Target, purpose: str) -> Target:
    name = f"pgrb_{purpose}_{uuid.uuid4().hex[:8]}"
    return Target(
        f"{target.name}-{purpose}",
        db.with_database(target.url, name),
        sandbox=target.sandbox,
        source=f"scratch on {target.name}",
        app=target.app,  # the same migration history
    )


def drift(target: Target, current: tuple[str, ...]) -> Drift:
    """The live schema against a scratch database built by the migrations up to `current`."""
    scratch = scratch_target(target, "drift")
    with debris.working_on(target, scratch.database, "migrate drift"):
        return _drift(target, scratch, current)


def _drift(target: Target, scratch: Target, current: tuple[str, ...]) -> Drift:
    with admin.connect(target, application="pgrunbook/migrate") as conn:
        admin.create(conn, scratch.database)
    try:
        if current:
            migrations.upgrade(scratch, current[0])
        with db.connect(scratch) as c:
            expected = catalog.schema_facts(c)
        with db.connect(target) as c:
            live = catalog.schema_facts(c)
    finally:
        admin.drop_database(target, scratch.database)
    diff = catalog.schema_difference(expected, live)
    if diff:
        return Drift(
            Finding(
                "drift",
                Status.WARN,
                f"{len(diff)} objects differ from what the migrations build: "
                + ", ".join(diff[:3]),
                examples=tuple(diff[:20]),
            ),
            diff,
        )
    return Drift(
        Finding("drift", Status.OK, "the live schema is exactly what the migrations build"), diff
    )


def rehearse(target: Target, p: Plan, *, mode: str, jobs: int = 2) -> list[Finding]:
    """On a copy of the target: upgrade, downgrade, upgrade; each schema compared with the one
    before."""
    if mode != "rehearse":
        return [Finding("rehearse", Status.OK, f"skipped in {mode} mode")]
    if not p.pending:
        return [Finding("rehearse", Status.OK, "nothing pending to rehearse")]
    copy = scratch_target(target, "rehearse")
    with debris.working_on(target, copy.database, "migrate rehearse"):
        return _rehearse(target, p, copy, jobs=jobs)


def _rehearse(target: Target, p: Plan, copy: Target, *, jobs: int) -> list[Finding]:
    start = p.current[0] if p.current else "base"
    steps = [
        ("upgrade", lambda: migrations.upgrade(copy, p.to_revision)),
        ("downgrade", lambda: migrations.downgrade(copy, start)),
        ("upgrade again", lambda: migrations.upgrade(copy, p.to_revision)),
    ]
    found: list[Finding] = []
    if (h := migrations.history(target)) is not None:  # no down migrations: the upgrade only
        steps = steps[:1]
        found.append(
            Finding(
                "rehearse downgrade",
                Status.OK,
                f"not rehearsed: a {h.kind} history has no down migrations (a failed deploy"
                " is rolled back whole; restore the pre-migration backup to go back)",
            )
        )
    try:
        copy_database(target, copy.database, jobs=jobs)
        facts = [_facts(copy)]
        for name, step in steps:
            try:
                step()
            except Exception as e:
                found.append(
                    Finding(
                        f"rehearse {name}",
                        Status.CRIT,
                        f"{name} fails on a copy of "
                        f"{target.name!r}: {str(root_cause(e)).strip().splitlines()[0]}",
                    )
                )
                break
            facts.append(_facts(copy))
            if name == "upgrade" and h is not None:
                found.append(
                    Finding(
                        "rehearse upgrade",
                        Status.OK,
                        f"{len(p.pending)} migrations to {p.to_revision} apply on a copy of"
                        f" {target.name!r}",
                    )
                )
            if name == "downgrade":
                back = catalog.schema_difference(facts[0], facts[2])
                found.append(
                    Finding(
                        "rehearse downgrade",
                        Status.CRIT if back else Status.OK,
                        (
                            f"downgrade to {start} does not restore the schema:"
                            f" {', '.join(back[:3])}"
                            if back
                            else f"downgrade to {start} restores the schema exactly"
                        ),
                        examples=tuple(back[:20]),
                    )
                )
            if name == "upgrade again":
                again = catalog.schema_difference(facts[1], facts[3])
                found.append(
                    Finding(
                        "rehearse upgrade",
                        Status.CRIT if again else Status.OK,
                        (
                            f"upgrading again differs: {', '.join(again[:3])}"
                            if again
                            else (
                                f"upgrade, downgrade, upgrade to {p.to_revision}: same schema"
                                " each way"
                            )
                        ),
                    )
                )
    finally:
        admin.drop_database(target, copy.database)
    return found


def _facts(target: Target):
    with db.connect(target) as conn:
        return catalog.schema_facts(conn)


def copy_database(target: Target, name: str, *, jobs: int = 2) -> None:
    """Copy the target's database into a new one beside it (dump and restore, no lock on the
    target)."""

    with admin.connect(target, application="pgrunbook/migrate") as conn:
        dumper = pgtools.choose("pg_dump", conn.info.server_version // 10000)
        way = pgrestore.restorer_for(conn, made_by=dumper.major)
        admin.create(conn, name, template="template0")
    with tempfile.TemporaryDirectory(prefix="pgrb-copy-") as tmp:
        dump = Path(tmp) / "dump"
        pgtools.run(dumper, ["-Fd", "-j", str(jobs), "-f", str(dump)], target.url)
        way.run(dump, db.with_database(target.url, name), jobs=jobs)
