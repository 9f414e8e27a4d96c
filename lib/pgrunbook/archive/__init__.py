"""The archive: the runner that executes a runbook and keeps its report, the index, the guards."""
