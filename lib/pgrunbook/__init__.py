"""pgrunbook: operational runbooks for PostgreSQL as parameterized, audited notebooks."""

__version__ = "0.1.0"
