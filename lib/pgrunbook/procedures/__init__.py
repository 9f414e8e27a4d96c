"""Procedures that change things: backup, restore, swap, refresh, migrate, seed, drill, cleanup.

They run the same checks for their pre-flight and their verification.
"""
