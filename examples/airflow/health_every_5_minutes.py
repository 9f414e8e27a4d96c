"""Health of every tenant database every 5 minutes, 4 at a time (the `pgrunbook` pool).

Create the pool once: `airflow pools set pgrunbook 4 "pgrunbook runs"`. Workers need the
project (PGRUNBOOK_HOME), the targets' URL variables, and PGRUNBOOK_REPORTS_DIR on a folder
they share, so that every report lands in one archive.
"""

from datetime import timedelta

from pgrunbook.airflow import fleet_dag

dag = fleet_dag(
    "health",
    "tenants",
    schedule=timedelta(minutes=5),
    retries=2,
    retry_delay=timedelta(seconds=30),
    dagrun_timeout=timedelta(minutes=4),
)
