"""Staging refreshed from production with personal data masked, when someone triggers it (no
schedule). The fleet `staging` selects the staging targets; each refresh copies its source,
masks it, verifies that no source value is left, and swaps it in."""

from pgrunbook.airflow import fleet_dag

dag = fleet_dag(
    "staging_refresh",
    "staging",
    params={"mode": "apply"},
    schedule=None,
    retries=1,
)
