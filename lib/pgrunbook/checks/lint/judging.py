"""A statement's actions: every action of a multi-action ALTER TABLE judged separately, with
the rule it falls under, whether it rewrites or scans the table, and the tables it touches.
Where PostgreSQL decides (a cast without rewrite, a volatile default, a proven NOT NULL), the
live target is asked (facts.ddl)."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from pglast import ast, enums
from pglast.stream import RawStream

from ...base.sqlparse import Statement
from ...facts import ddl
from .rules import LOCKS, RULES, Rule

SERIAL = {"serial", "serial4", "bigserial", "serial8", "smallserial", "serial2"}
T = enums.AlterTableType
C = enums.ConstrType
O = enums.ObjectType  # noqa: E741


@dataclass(frozen=True)
class Action:
    """One thing a statement does to the database, with the rule it falls under."""

    statement: Statement
    rule: Rule
    tables: tuple[str, ...] = ()  # as written: schema-qualified where the SQL qualifies them
    rewrites: bool = False
    scans: bool = False
    references: tuple[str, ...] = ()
    note: str = ""
    new: bool = False  # every object it touches is made earlier in the plan (or does not exist)


def _name(rv: ast.RangeVar | None) -> str:
    if rv is None:
        return ""
    return f"{rv.schemaname}.{rv.relname}" if rv.schemaname else rv.relname


def _type_names(tn: ast.TypeName) -> list[str]:
    return [n.sval for n in tn.names]


def _typmods(tn: ast.TypeName) -> list[int]:
    out = []
    for m in tn.typmods or ():
        value = getattr(getattr(m, "val", None), "ival", None)
        if value is None:
            return []
        out.append(value)
    return out


def sql_of(node) -> str:
    """A node as SQL text (pglast's deparser)."""
    return RawStream()(node)


def _functions(node) -> set[str]:
    """The names of the functions an expression calls."""
    found: set[str] = set()

    def walk(n):
        if isinstance(n, ast.FuncCall):
            found.add(n.funcname[-1].sval)
        if isinstance(n, ast.Node):
            for attr in n:
                walk(getattr(n, attr))
        elif isinstance(n, tuple):
            for x in n:
                walk(x)

    walk(node)
    return found


class Server:
    """What the lint asks the live target (facts.ddl), each answer read once. `created`: what
    earlier statements of the plan made (see `made`): tables and views by their names (empty by
    definition), other objects as `kind:name`."""

    def __init__(self, conn: psycopg.Connection, created: set[str] | None = None):
        self.conn = conn
        self.created = created if created is not None else set()
        self._relations: dict[str, ddl.Relation | None] = {}
        self._rows: dict[int, bool] = {}

    def relation(self, name: str) -> ddl.Relation | None:
        if name and name not in self._relations:
            self._relations[name] = ddl.relation(self.conn, name)
        return self._relations.get(name)

    def has_rows(self, name: str) -> bool:
        rel = None if name in self.created else self.relation(name)
        if rel is None:
            return False
        if rel.oid not in self._rows:
            self._rows[rel.oid] = ddl.has_rows(self.conn, rel)
        return self._rows[rel.oid]

    def populated(self, tables) -> bool:
        return any(self.has_rows(t) for t in tables)

    def column_type(self, table: str, column: str) -> ddl.ColumnType | None:
        rel = self.relation(table)
        return ddl.column_type(self.conn, rel, column) if rel else None

    def type_oid(self, tn: ast.TypeName) -> int | None:
        return ddl.type_oid(self.conn, ".".join(ddl.quoted(n) for n in _type_names(tn)))

    def binary_coercible(self, source: int, target: int) -> bool:
        return ddl.binary_coercible(self.conn, source, target)

    def volatile(self, functions: set[str]) -> bool:
        return ddl.any_volatile(self.conn, functions)

    def proven_not_null(self, table: str, column: str) -> bool:
        rel = self.relation(table)
        return bool(rel) and ddl.proven_not_null(self.conn, rel, column)

    def index_table(self, index: str) -> str | None:
        return ddl.index_table(self.conn, index)

    def made(self, kind: str, name: str) -> bool:
        """Whether the plan made this object (a table or view: `kind` "relation")."""
        key = name if kind == "relation" else f"{kind}:{name}"
        return key in self.created or _unqualified(key) in self.created

    def make(self, kind: str, name: str) -> None:
        if name:
            key = name if kind == "relation" else f"{kind}:{name}"
            self.created |= {key, _unqualified(key)}

    def exists(self, kind: str, name: str, table: str = "") -> bool:
        """Whether the object exists in the live database now (an unknown kind: taken as yes)."""
        schema, _, bare = name.rpartition(".")
        found = ddl.object_exists(self.conn, kind, bare, schema or None, table)
        return True if found is None else found


def _unqualified(key: str) -> str:
    """`public.x` as `x`: the plan's own statements mostly leave the default schema out."""
    kind, colon, name = key.rpartition(":")
    name = name.removeprefix("public.")
    return f"{kind}{colon}{name}"


def judge(stmt: Statement, server: Server, pending: set[tuple[str, str]]) -> list[Action]:
    """What `stmt` does, action by action. `pending`: constraints added NOT VALID earlier in the
    same transaction (updated here)."""
    n = stmt.node

    def act(rule: str, tables=(), **kw) -> Action:
        tables = tuple(t for t in tables if t)
        if "new" not in kw and tables:  # every table it touches was made by the plan
            kw["new"] = all(server.made("relation", t) for t in tables)
        return Action(stmt, RULES[rule], tables, **kw)

    _made(n, server)
    out: list[Action]
    if isinstance(n, ast.IndexStmt):
        table = _name(n.relation)
        out = [act("index-concurrently" if n.concurrent else "index-without-concurrently", [table])]
        if n.concurrent and stmt.in_transaction:
            out.append(act("not-in-a-transaction", [table], note="CREATE INDEX CONCURRENTLY"))
    elif isinstance(n, ast.CreateStmt):
        refs = tuple(
            _name(c.pktable)
            for c in list(n.constraints or ())
            + [
                k
                for col in n.tableElts or ()
                if isinstance(col, ast.ColumnDef)
                for k in col.constraints or ()
            ]
            + [k for k in n.tableElts or () if isinstance(k, ast.Constraint)]
            if isinstance(c, ast.Constraint) and c.contype == C.CONSTR_FOREIGN
        )
        parent = tuple(_name(p) for p in n.inhRelations or ()) if n.partbound else ()
        out = [act("create-table", [_name(n.relation)], references=refs + parent)]
    elif isinstance(n, ast.DropStmt):
        out = _drop(stmt, n, server, act)
    elif isinstance(n, ast.TruncateStmt):
        cascade = n.behavior == enums.DropBehavior.DROP_CASCADE
        out = [act("truncate-cascade" if cascade else "truncate", [_name(r) for r in n.relations])]
    elif isinstance(n, ast.ReindexStmt):
        concurrent = any(p.defname == "concurrently" for p in n.params or ())
        table = _name(n.relation) if n.relation else ""
        if n.kind == enums.ReindexObjectType.REINDEX_OBJECT_INDEX and table:
            table = server.index_table(table) or table
        out = [act("reindex-concurrently" if concurrent else "reindex", [table])]
        if concurrent and stmt.in_transaction:
            out.append(act("not-in-a-transaction", [table], note="REINDEX CONCURRENTLY"))
    elif isinstance(n, ast.ClusterStmt):
        out = [act("cluster", [_name(n.relation)], rewrites=True)]
    elif isinstance(n, ast.VacuumStmt):
        tables = [_name(r.relation) for r in n.rels or ()]
        if not n.is_vacuumcmd:
            out = [act("other", tables, note="ANALYZE")]
        else:
            full = any(o.defname == "full" for o in n.options or ())
            out = [act("vacuum-full" if full else "vacuum", tables, rewrites=full)]
            if stmt.in_transaction:
                out.append(act("not-in-a-transaction", tables, note="VACUUM"))
    elif isinstance(n, ast.LockStmt):
        strong = n.mode >= 5
        out = [
            act(
                "lock-table" if strong else "other",
                [_name(r) for r in n.relations],
                note=f"LOCK ... IN {LOCKS.get(n.mode, '?')} MODE",
            )
        ]
    elif isinstance(n, ast.AlterEnumStmt):
        late = "; the new value cannot be used before the transaction commits"
        enum = ".".join(t.sval for t in n.typeName)
        out = [
            act(
                "rename-enum-value" if n.oldVal else "enum-add-value",
                note=enum + (late if stmt.in_transaction else ""),
                new=server.made("type", enum),
            )
        ]
    elif isinstance(n, ast.CreateTrigStmt):
        out = [act("create-trigger", [_name(n.relation)])]
    elif isinstance(n, ast.RenameStmt):
        if n.renameType in (O.OBJECT_TABLE, O.OBJECT_COLUMN, O.OBJECT_VIEW, O.OBJECT_MATVIEW):
            out = [act("rename", [_name(n.relation)])]
        else:
            out = [act("other", [_name(n.relation)] if n.relation else [], note="rename")]
        _renamed(n, server)
    elif isinstance(n, ast.AlterTableStmt) and n.objtype == O.OBJECT_TABLE:
        table = _name(n.relation)
        out = [a for cmd in n.cmds for a in _alter(stmt, table, cmd, server, pending, act)]
    elif isinstance(n, ast.AlterTableStmt):
        out = [act("alter-table", [_name(n.relation)])]
    elif isinstance(n, (ast.UpdateStmt, ast.DeleteStmt, ast.InsertStmt)):
        out = [act("data-change", [_name(n.relation)])]
    else:
        out = [act("other")]
    return out


LIVE_RELATIONS = (O.OBJECT_VIEW, O.OBJECT_MATVIEW, O.OBJECT_SEQUENCE, O.OBJECT_FOREIGN_TABLE)


KINDS = {  # a DROP's object type: the kind `Server.made` and `Server.exists` know it by
    O.OBJECT_TABLE: "relation", O.OBJECT_VIEW: "relation", O.OBJECT_MATVIEW: "relation",
    O.OBJECT_SEQUENCE: "relation", O.OBJECT_FOREIGN_TABLE: "relation", O.OBJECT_TYPE: "type",
    O.OBJECT_DOMAIN: "type", O.OBJECT_FUNCTION: "function", O.OBJECT_PROCEDURE: "function",
    O.OBJECT_ROUTINE: "function", O.OBJECT_AGGREGATE: "function", O.OBJECT_TRIGGER: "trigger",
    O.OBJECT_SCHEMA: "schema", O.OBJECT_EXTENSION: "extension", O.OBJECT_INDEX: "index",
    O.OBJECT_POLICY: "policy",
}  # fmt: skip


def _dropped(n: ast.DropStmt) -> list[tuple[str, str, str]]:
    """(kind, name, table) of each object a DROP names, as `Server` knows them."""
    kind = KINDS.get(n.removeType, "")
    out = []
    for obj in n.objects:
        if isinstance(obj, ast.TypeName):  # DROP TYPE, DROP DOMAIN
            out.append((kind, ".".join(_type_names(obj)), ""))
        elif isinstance(obj, ast.ObjectWithArgs):  # DROP FUNCTION f(int)
            out.append((kind, ".".join(p.sval for p in obj.objname), ""))
        else:
            each = obj if isinstance(obj, tuple) else (obj,)
            parts = [getattr(p, "sval", str(p)) for p in each]
            if kind in ("trigger", "policy"):  # its table, then its name
                out.append((kind, parts[-1], ".".join(parts[:-1])))
            else:
                out.append((kind, ".".join(parts), ""))
    return out


def _drop(stmt: Statement, n: ast.DropStmt, server: Server, act) -> list[Action]:
    found = _dropped(n)
    names = [name for _, name, _ in found]
    # nothing running can be using an object the plan made, nor one that does not exist
    # (IF EXISTS); a kind not asked here is taken as live
    new = bool(found) and all(
        (kind and server.made(kind, f"{table}.{name}" if table else name))
        or (kind and n.missing_ok and not server.exists(kind, name, table))
        for kind, name, table in found
    )
    if n.removeType == O.OBJECT_TABLE:
        return [act("drop-table", names, new=new)]
    if n.removeType == O.OBJECT_INDEX:
        tables = [server.index_table(i) or "" for i in names]
        out = [act("drop-index-concurrently" if n.concurrent else "drop-index", tables, new=new)]
        if n.concurrent and stmt.in_transaction:
            out.append(act("not-in-a-transaction", tables, note="DROP INDEX CONCURRENTLY"))
        return out
    what = enums.ObjectType(n.removeType).name.removeprefix("OBJECT_").lower()
    gone = not new and all(  # none of them exists now: nothing live can be using them
        kind and not server.exists(kind, name, table) for kind, name, table in found
    )
    shown = [f"{t}.{name}" if t else name for _, name, t in found]
    return [act("drop-object-not-live" if gone else "drop-object", new=new,
                note=f"DROP {what.upper()} {', '.join(shown)}")]  # fmt: skip


def _made(n, server: Server) -> None:
    """What `n` creates, remembered for the rest of the plan (see `Server.made`)."""
    if isinstance(n, ast.CreateStmt):
        server.make("relation", _name(n.relation))
    elif isinstance(n, ast.CreateTableAsStmt):
        server.make("relation", _name(n.into.rel))
    elif isinstance(n, ast.ViewStmt):
        server.make("relation", _name(n.view))
    elif isinstance(n, ast.CreateSeqStmt):
        server.make("relation", _name(n.sequence))
    elif isinstance(n, ast.IndexStmt) and n.idxname:
        server.make("index", f"{n.relation.schemaname}.{n.idxname}" if n.relation.schemaname
                    else n.idxname)  # fmt: skip
    elif isinstance(n, ast.CreateEnumStmt):
        server.make("type", ".".join(t.sval for t in n.typeName))
    elif isinstance(n, ast.CompositeTypeStmt):
        server.make("type", _name(n.typevar))
    elif isinstance(n, ast.CreateDomainStmt):
        server.make("type", ".".join(t.sval for t in n.domainname))
    elif isinstance(n, ast.CreateFunctionStmt):
        server.make("function", ".".join(p.sval for p in n.funcname))
    elif isinstance(n, ast.CreateTrigStmt):
        server.make("trigger", f"{_name(n.relation)}.{n.trigname}")
    elif isinstance(n, ast.CreatePolicyStmt):
        server.make("policy", f"{_name(n.table)}.{n.policy_name}")
    elif isinstance(n, ast.CreateSchemaStmt):
        server.make("schema", n.schemaname or "")


def _renamed(n: ast.RenameStmt, server: Server) -> None:
    """A renamed object the plan made is still the plan's, under its new name."""
    if n.renameType in (O.OBJECT_TABLE, O.OBJECT_VIEW, O.OBJECT_MATVIEW, O.OBJECT_SEQUENCE):
        old = _name(n.relation)
        if server.made("relation", old):
            schema = n.relation.schemaname
            server.make("relation", f"{schema}.{n.newname}" if schema else n.newname)
    elif n.renameType in (O.OBJECT_TYPE, O.OBJECT_DOMAIN) and isinstance(n.object, tuple):
        old = ".".join(p.sval for p in n.object)
        if server.made("type", old):
            server.make("type", n.newname)
    elif n.renameType == O.OBJECT_INDEX and n.relation is not None:
        if server.made("index", n.relation.relname):
            server.make("index", n.newname)


def _alter(stmt, table, cmd, server: Server, pending, act) -> list[Action]:
    sub = cmd.subtype
    if sub == T.AT_AddColumn:
        return _add_column(table, cmd.def_, server, act)
    if sub == T.AT_AlterColumnType:
        return [_type_change(table, cmd, server, act)]
    if sub == T.AT_SetNotNull:
        if table not in server.created and (live := server.column_type(table, cmd.name)):
            if live.not_null:
                return [act("set-not-null-already", [table], note=cmd.name)]
        if table in server.created or server.proven_not_null(table, cmd.name):
            return [act("set-not-null-proven", [table])]
        return [act("set-not-null", [table], scans=True, note=cmd.name)]
    if sub in (T.AT_AddConstraint, T.AT_AddIndexConstraint):
        c = cmd.def_
        if isinstance(c, ast.IndexStmt) or getattr(c, "indexname", None):
            return [act("constraint-using-index", [table])]
        if c.contype == C.CONSTR_FOREIGN:
            if c.skip_validation:
                pending.add((table, c.conname or ""))
                return [act("foreign-key-not-valid", [table], references=(_name(c.pktable),))]
            return [act("foreign-key", [table], scans=True, references=(_name(c.pktable),))]
        if c.contype == C.CONSTR_CHECK:
            if c.skip_validation:
                pending.add((table, c.conname or ""))
                return [act("check-not-valid", [table])]
            return [act("check", [table], scans=True)]
        if c.contype in (C.CONSTR_PRIMARY, C.CONSTR_UNIQUE):
            return [act("unique-or-primary-key", [table], scans=True)]
        if c.contype == C.CONSTR_EXCLUSION:
            return [act("exclusion-constraint", [table], scans=True)]
        return [act("alter-table", [table])]
    if sub == T.AT_ValidateConstraint:
        if (table, cmd.name) in pending and stmt.in_transaction:
            return [act("validate-in-the-same-transaction", [table], scans=True, note=cmd.name)]
        return [act("validate-constraint", [table], scans=True)]
    if sub == T.AT_DropColumn:
        return [act("drop-column", [table], note=cmd.name)]
    if sub == T.AT_AttachPartition:
        return [act("attach-partition", [_name(cmd.def_.name)], scans=True, references=(table,))]
    if sub == T.AT_DetachPartition:
        part = _name(cmd.def_.name)
        if cmd.def_.concurrent:
            out = [act("detach-partition-concurrently", [table, part])]
            if stmt.in_transaction:
                out.append(act("not-in-a-transaction", [table], note="DETACH ... CONCURRENTLY"))
            return out
        return [act("detach-partition", [table, part])]
    if sub in (T.AT_SetLogged, T.AT_SetUnLogged, T.AT_SetAccessMethod):
        return [act("table-rewrite", [table], rewrites=True)]
    return [act("alter-table", [table])]


def is_serial(col: ast.ColumnDef) -> bool:
    """serial, bigserial, smallserial: a column with a sequence for its default."""
    names = _type_names(col.typeName) if col.typeName else []
    return bool(names) and names[-1] in SERIAL


def _add_column(table, col: ast.ColumnDef, server: Server, act) -> list[Action]:
    kinds = {c.contype: c for c in col.constraints or ()}
    default = kinds.get(C.CONSTR_DEFAULT)
    out = []
    if is_serial(col):
        out.append(act("serial-column", [table], rewrites=True))
    elif C.CONSTR_IDENTITY in kinds:
        out.append(act("identity-column", [table], rewrites=True))
    elif C.CONSTR_GENERATED in kinds and kinds[C.CONSTR_GENERATED].generated_kind != "v":
        out.append(act("stored-generated-column", [table], rewrites=True))
    elif default is not None and server.volatile(_functions(default.raw_expr)):
        out.append(act("volatile-default", [table], rewrites=True))
    elif C.CONSTR_NOTNULL in kinds and default is None:
        out.append(act("required-column-without-default", [table]))
    if C.CONSTR_PRIMARY in kinds or C.CONSTR_UNIQUE in kinds:
        out.append(act("column-with-index", [table], scans=True))
    if C.CONSTR_FOREIGN in kinds and default is not None:
        out.append(
            act(
                "foreign-key",
                [table],
                scans=True,
                references=(_name(kinds[C.CONSTR_FOREIGN].pktable),),
            )
        )
    if C.CONSTR_CHECK in kinds and default is not None:
        out.append(act("check", [table], scans=True))
    return out or [act("add-column", [table])]


def _type_change(table, cmd, server: Server, act) -> Action:
    col: ast.ColumnDef = cmd.def_
    if table in server.created:
        return act("type-change-without-rewrite", [table])
    old = server.column_type(table, cmd.name)
    new = server.type_oid(col.typeName)
    if old is None or new is None:
        return act("type-change-rewrites", [table], rewrites=True, note="the column's type unknown")
    old_oid, old_mod, old_name = old.type_oid, old.typmod, old.type_name
    mods = _typmods(col.typeName)
    if col.raw_default is not None:  # USING: every row is recomputed
        return act("type-change-rewrites", [table], rewrites=True, note="USING")
    if old_oid == new:
        if _widens(old_name, old_mod, mods):
            return act("type-change-without-rewrite", [table], note=f"{old_name} widened")
        return act("type-change-rewrites", [table], rewrites=True)
    if server.binary_coercible(old_oid, new) and not mods:
        return act("type-change-without-rewrite", [table], note="binary-coercible cast")
    if server.binary_coercible(old_oid, new) and _widens(
        old_name, -1 if old_name == "text" else old_mod, mods
    ):
        return act("type-change-without-rewrite", [table], note="binary-coercible cast")
    return act("type-change-rewrites", [table], rewrites=True)


def _widens(type_name: str, old_mod: int, mods: list[int]) -> bool:
    """Whether a new type modifier only widens the old, which PostgreSQL applies without touching
    a row (the length-coercion functions of these types say so to the planner)."""
    if not mods:  # unconstrained: every old value fits
        return type_name in ("character varying", "numeric", "bit varying") or old_mod == -1
    if old_mod == -1:
        return False  # unconstrained to constrained: every row is checked
    if type_name in ("character varying", "bit varying"):
        return mods[0] >= old_mod - (4 if type_name == "character varying" else 0)
    if type_name == "numeric":
        precision, scale = ((old_mod - 4) >> 16) & 0xFFFF, (old_mod - 4) & 0xFFFF
        new_scale = mods[1] if len(mods) > 1 else 0
        return new_scale == scale and mods[0] >= precision
    if type_name.startswith(("timestamp", "time ", "interval")):
        return mods[0] >= old_mod
    return False
