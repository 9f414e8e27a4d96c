"""The weekly performance review of every service database, Monday 06:00 UTC: rankings, plans
of slow statements, index advice, and what changed since last week's review."""

from pgrunbook.airflow import fleet_dag

dag = fleet_dag("performance", "services", params={"top": 20}, schedule="0 6 * * 1")
