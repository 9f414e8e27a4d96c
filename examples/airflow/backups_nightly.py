"""A verified backup of every production database each night at 02:00 UTC: each one restored
into a scratch database and compared with its manifest before it counts. A backup that fails
is never retried by Airflow (it may have written part of a dump); only a server that could not
be reached is."""

from datetime import timedelta

from pgrunbook.airflow import fleet_dag

dag = fleet_dag(
    "backup",
    "production",
    params={"verify": True, "prune": True},
    schedule="0 2 * * *",
    retries=3,
    retry_delay=timedelta(minutes=5),
)
