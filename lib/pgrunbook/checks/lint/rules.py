"""The lint's rules: for each kind of action, the lock it takes, when it is unsafe, and the recipe
that does the same thing safely. Squawk's rule names the suite counts, and those it leaves out."""

from __future__ import annotations

from dataclasses import dataclass

IGNORED_SQUAWK = {
    "require-lock-timeout",
    "require-statement-timeout",
    "require-timeout-settings",
    "prefer-robust-stmts",
    "transaction-nesting",
}  # the session sets timeouts itself, and alembic wraps each revision in its transaction

SQUAWK_SAFETY = {
    "adding-field-with-default",
    "adding-foreign-key-constraint",
    "adding-not-nullable-field",
    "adding-required-field",
    "adding-serial-primary-key-field",
    "ban-alter-domain-with-add-constraint",
    "ban-concurrent-index-creation-in-transaction",
    "ban-drop-column",
    "ban-drop-database",
    "ban-drop-not-null",
    "ban-drop-table",
    "ban-truncate-cascade",
    "changing-column-type",
    "constraint-missing-not-valid",
    "disallowed-unique-constraint",
    "renaming-column",
    "renaming-table",
    "require-concurrent-index-creation",
    "require-concurrent-index-deletion",
}
LOCKS = {
    1: "ACCESS SHARE",
    2: "ROW SHARE",
    3: "ROW EXCLUSIVE",
    4: "SHARE UPDATE EXCLUSIVE",
    5: "SHARE",
    6: "SHARE ROW EXCLUSIVE",
    7: "EXCLUSIVE",
    8: "ACCESS EXCLUSIVE",
}


@dataclass(frozen=True)
class Rule:
    """`when`: unsafe on a table with rows (`rows`), always (`always`), or WARN on a table with rows
    (`caution`); `safe` never."""

    name: str
    lock: str
    when: str
    recipe: str = ""


RULES = {
    r.name: r
    for r in (
        Rule("create-table", "none on existing tables", "safe"),
        Rule("index-concurrently", "SHARE UPDATE EXCLUSIVE", "safe"),
        Rule(
            "index-without-concurrently",
            "SHARE (blocks writes while the index builds)",
            "rows",
            "CREATE INDEX CONCURRENTLY, outside the transaction (alembic: "
            "op.get_context().autocommit_block())",
        ),
        Rule(
            "not-in-a-transaction",
            "none: the statement fails",
            "always",
            "run it outside the revision's transaction (alembic: op.get_context()"
            ".autocommit_block(); a Prisma or plain SQL file: a file of its own, run statement by"
            " statement)",
        ),
        Rule(
            "drop-index",
            "ACCESS EXCLUSIVE on the table",
            "rows",
            "DROP INDEX CONCURRENTLY, outside the transaction",
        ),
        Rule("drop-index-concurrently", "SHARE UPDATE EXCLUSIVE", "safe"),
        Rule(
            "reindex",
            "SHARE on the table, ACCESS EXCLUSIVE on the index",
            "rows",
            "REINDEX ... CONCURRENTLY, outside the transaction",
        ),
        Rule("reindex-concurrently", "SHARE UPDATE EXCLUSIVE", "safe"),
        Rule(
            "drop-table",
            "ACCESS EXCLUSIVE",
            "always",
            "deploy an app version that no longer uses the table first, then drop it",
        ),
        Rule(
            "drop-object",
            "ACCESS EXCLUSIVE on the object",
            "always",
            "deploy an app version that no longer uses it first, then drop it",
        ),
        Rule(
            "drop-object-not-live",
            "ACCESS EXCLUSIVE on the object",
            "safe",
            "the object does not exist in the live database: made (or renamed) earlier in the plan",
        ),
        Rule(
            "truncate",
            "ACCESS EXCLUSIVE",
            "rows",
            "delete rows in batches by key range, or truncate only a table no one reads",
        ),
        Rule(
            "truncate-cascade",
            "ACCESS EXCLUSIVE on every table that references these, and theirs",
            "always",
            "name every table to empty: CASCADE empties tables the statement does not name",
        ),
        Rule(
            "cluster",
            "ACCESS EXCLUSIVE, rewrites the table",
            "rows",
            "pg_repack (or pg_squeeze) reorders a table without holding the lock",
        ),
        Rule(
            "vacuum-full",
            "ACCESS EXCLUSIVE, rewrites the table",
            "rows",
            "pg_repack rewrites without the lock; plain VACUUM reclaims space for reuse",
        ),
        Rule("vacuum", "SHARE UPDATE EXCLUSIVE", "safe"),
        Rule(
            "lock-table",
            "as written",
            "rows",
            "take no explicit lock stronger than ROW EXCLUSIVE in a migration: it queues every"
            " reader or writer behind it",
        ),
        Rule("enum-add-value", "a lock on the type only; no table is touched", "safe"),
        Rule(
            "rename-enum-value",
            "ACCESS EXCLUSIVE on the type",
            "always",
            "add the new value, move the rows, switch the app, then stop using the old one",
        ),
        Rule(
            "create-trigger",
            "SHARE ROW EXCLUSIVE (blocks writes while it waits and runs)",
            "caution",
            "keep lock_timeout short (the runbook sets it) and deploy at low traffic: the trigger"
            " then runs on every write",
        ),
        Rule("add-column", "ACCESS EXCLUSIVE (brief)", "safe"),
        Rule(
            "volatile-default",
            "ACCESS EXCLUSIVE, rewrites the table",
            "rows",
            "add the column without a default, SET DEFAULT after, backfill in batches",
        ),
        Rule(
            "serial-column",
            "ACCESS EXCLUSIVE, rewrites the table",
            "rows",
            "add a nullable bigint, attach a sequence as its default, backfill in batches, then"
            " the constraints",
        ),
        Rule(
            "identity-column",
            "ACCESS EXCLUSIVE, rewrites the table",
            "rows",
            "add a nullable bigint, backfill in batches, then ADD GENERATED ... AS IDENTITY",
        ),
        Rule(
            "stored-generated-column",
            "ACCESS EXCLUSIVE, rewrites the table",
            "rows",
            "add a plain column, backfill in batches and keep it up to date with a trigger, or"
            " compute it in a view",
        ),
        Rule(
            "required-column-without-default",
            "ACCESS EXCLUSIVE; fails on the first existing row",
            "rows",
            "add it nullable (or with a constant DEFAULT), backfill in batches, then SET NOT NULL"
            " after a validated CHECK (col IS NOT NULL)",
        ),
        Rule(
            "column-with-index",
            "ACCESS EXCLUSIVE while the index builds",
            "rows",
            "add the column, CREATE UNIQUE INDEX CONCURRENTLY, then ADD CONSTRAINT ... USING INDEX",
        ),
        Rule(
            "type-change-rewrites",
            "ACCESS EXCLUSIVE, rewrites the table and its indexes",
            "rows",
            "add a column of the new type, backfill, switch the app, then drop the old",
        ),
        Rule("type-change-without-rewrite", "ACCESS EXCLUSIVE (brief)", "safe"),
        Rule(
            "set-not-null",
            "ACCESS EXCLUSIVE while it scans the table",
            "rows",
            "ADD CHECK (col IS NOT NULL) NOT VALID, VALIDATE it in its own transaction, then SET"
            " NOT NULL (no scan then)",
        ),
        Rule(
            "set-not-null-proven", "ACCESS EXCLUSIVE (brief: a validated CHECK proves it)", "safe"
        ),
        Rule(
            "set-not-null-already",
            "ACCESS EXCLUSIVE (brief: the column is NOT NULL already)",
            "safe",
            "nothing to do: the live column is NOT NULL already, so nothing is scanned",
        ),
        Rule(
            "foreign-key",
            "SHARE ROW EXCLUSIVE on both tables while it scans",
            "rows",
            "ADD it NOT VALID, then VALIDATE CONSTRAINT in a later transaction",
        ),
        Rule("foreign-key-not-valid", "SHARE ROW EXCLUSIVE (brief)", "safe"),
        Rule(
            "check",
            "ACCESS EXCLUSIVE while it scans",
            "rows",
            "ADD it NOT VALID, then VALIDATE CONSTRAINT in a later transaction",
        ),
        Rule("check-not-valid", "ACCESS EXCLUSIVE (brief)", "safe"),
        Rule(
            "unique-or-primary-key",
            "ACCESS EXCLUSIVE while the index builds",
            "rows",
            "CREATE UNIQUE INDEX CONCURRENTLY, then ADD CONSTRAINT ... USING INDEX",
        ),
        Rule("constraint-using-index", "ACCESS EXCLUSIVE (brief)", "safe"),
        Rule(
            "exclusion-constraint",
            "ACCESS EXCLUSIVE while its index builds",
            "rows",
            "an exclusion constraint can be neither NOT VALID nor built from an existing index:"
            " add it while the table is small, or in a maintenance window",
        ),
        Rule("validate-constraint", "SHARE UPDATE EXCLUSIVE", "safe"),
        Rule(
            "validate-in-the-same-transaction",
            "the ADD's lock, held while VALIDATE scans",
            "rows",
            "VALIDATE CONSTRAINT in a later transaction (alembic: a later revision)",
        ),
        Rule(
            "drop-column",
            "ACCESS EXCLUSIVE (brief)",
            "always",
            "deploy an app version that no longer reads the column first, then drop it",
        ),
        Rule(
            "rename",
            "ACCESS EXCLUSIVE (brief)",
            "always",
            "add the new name beside the old, write both, switch the app, drop the old",
        ),
        Rule(
            "attach-partition",
            "SHARE UPDATE EXCLUSIVE on the parent, ACCESS EXCLUSIVE on the partition while it"
            " scans",
            "rows",
            "first ADD a CHECK matching the bound NOT VALID and VALIDATE it: the attach then skips"
            " the scan",
        ),
        Rule(
            "detach-partition",
            "ACCESS EXCLUSIVE on the parent",
            "rows",
            "DETACH PARTITION ... CONCURRENTLY, outside the transaction",
        ),
        Rule("detach-partition-concurrently", "SHARE UPDATE EXCLUSIVE", "safe"),
        Rule(
            "table-rewrite",
            "ACCESS EXCLUSIVE, rewrites the table",
            "rows",
            "do it in a maintenance window, or build a new table and switch",
        ),
        Rule("alter-table", "ACCESS EXCLUSIVE (brief)", "safe"),
        Rule(
            "data-change",
            "ROW EXCLUSIVE",
            "safe",
            "batch large updates by key range, each in its own transaction",
        ),
        Rule("other", "depends", "safe"),
    )
}
