"""Checks: facts and their `Limits` turned into findings (OK, WARN, CRIT, UNKNOWN). Read-only."""
