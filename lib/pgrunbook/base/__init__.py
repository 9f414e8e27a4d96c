"""The foundation: errors, configuration, targets, connections, limits, findings, files, secrets and
tools.

Imports nothing of the layers above it.
"""
