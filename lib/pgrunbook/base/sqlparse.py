"""SQL as PostgreSQL's own parser reads it (pglast): each statement with its text,
line, whether it runs inside a transaction, and the ignore comments before it."""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Any

from pglast import ast, enums, parse_sql
from pglast.parser import ParseError

from .errors import PgRunbookError

IGNORE = re.compile(r"--\s*pgrunbook:ignore\s+([\w-]+)\s*(.*)$", re.M)


class LintParseError(PgRunbookError):
    """A migration's SQL that PostgreSQL's parser rejects."""


@dataclass(frozen=True)
class Statement:
    """One statement of a script, as PostgreSQL's parser reads it."""

    text: str
    node: Any
    line: int
    in_transaction: bool
    ignores: tuple[tuple[str, str], ...] = ()

    @property
    def kind(self) -> str:
        return type(self.node).__name__

    @property
    def needs_autocommit(self) -> bool:
        """A statement PostgreSQL refuses inside a transaction block."""
        n = self.node
        if isinstance(n, (ast.IndexStmt, ast.DropStmt)):
            return bool(n.concurrent)
        if isinstance(n, ast.ReindexStmt):
            return any(p.defname == "concurrently" for p in n.params or ())
        if isinstance(n, ast.VacuumStmt):
            return bool(n.is_vacuumcmd)
        if isinstance(n, ast.AlterTableStmt):
            return any(
                c.subtype == enums.AlterTableType.AT_DetachPartition and c.def_.concurrent
                for c in n.cmds
            )
        return isinstance(
            n, (ast.CreatedbStmt, ast.DropdbStmt, ast.AlterSystemStmt, ast.CreateTableSpaceStmt)
        )

    @property
    def bookkeeping(self) -> bool:
        """The history table's own rows (alembic_version, _prisma_migrations)."""
        relation = getattr(self.node, "relation", None)
        return getattr(relation, "relname", "") in ("alembic_version", "_prisma_migrations")


def parse(script: str, *, in_transaction: bool = False) -> list[Statement]:
    """The statements of `script` (BEGIN / COMMIT themselves left out, but followed: alembic's
    offline SQL commits around an autocommit block). `in_transaction`: whether the script starts
    inside one."""
    try:
        raw = parse_sql(script)
    except ParseError as e:  # args: the message, and the character offset where it stopped
        at = e.args[1] if len(e.args) > 1 and isinstance(e.args[1], int) else None
        line = script[:at].count("\n") + 1 if at else "?"
        raise LintParseError(f"line {line}: {e.args[0]}") from None
    out, end = [], 0
    # pglast gives locations in characters of `script` (not bytes: one multi-byte character
    # before a statement would shift every slice after it)
    newlines = [m.start() for m in re.finditer("\n", script)]
    for r in raw:
        start = r.stmt_location
        stop = start + r.stmt_len if r.stmt_len else len(script)
        text, before, end = script[start:stop], script[end:start], stop
        node = r.stmt
        if isinstance(node, ast.TransactionStmt):
            kind = node.kind
            if kind in (
                enums.TransactionStmtKind.TRANS_STMT_BEGIN,
                enums.TransactionStmtKind.TRANS_STMT_START,
            ):
                in_transaction = True
            elif kind in (
                enums.TransactionStmtKind.TRANS_STMT_COMMIT,
                enums.TransactionStmtKind.TRANS_STMT_ROLLBACK,
            ):
                in_transaction = False
            continue
        ignores = tuple((m[1], m[2].strip()) for m in IGNORE.finditer(before))
        line = bisect.bisect_right(newlines, start) + 1
        out.append(Statement(text.strip(), node, line, in_transaction, ignores))
    return out
