"""Replication: whether this server is a standby and how far behind it is, and its replicas' lag."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg.rows import class_row

STANDBY = """
    SELECT pg_is_in_recovery() AS standby,
           extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 AS replay_lag_s
"""

REPLICAS = """
    SELECT application_name AS name,
           extract(epoch FROM coalesce(replay_lag, '0'))::float8 AS replay_lag_s
      FROM pg_stat_replication
     ORDER BY 2 DESC, 1
"""


@dataclass(frozen=True)
class Standby:
    standby: bool
    replay_lag_s: float | None  # None: nothing replayed yet (or not a standby)


@dataclass(frozen=True)
class Replica:
    name: str
    replay_lag_s: float


def standby(conn: psycopg.Connection) -> Standby:
    with conn.cursor(row_factory=class_row(Standby)) as cur:
        return cur.execute(STANDBY).fetchone()


def replicas(conn: psycopg.Connection) -> list[Replica]:
    """The replicas streaming from this server, the furthest behind first."""
    with conn.cursor(row_factory=class_row(Replica)) as cur:
        return cur.execute(REPLICAS).fetchall()
