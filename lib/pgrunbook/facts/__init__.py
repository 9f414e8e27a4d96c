"""Facts read from a server, its catalogue and the archive, one reader per fact, by area.

No thresholds and no statuses here: checks turn facts into findings.
"""
