"""Sanitizing a copy of production: masking rules for personal data, applied in the server as rows
load, and the proof that none remains.

`rules` reads the rules and the salt; `planning` matches them to the source's
columns; `masks` applies them during a restore's data pass; `text` finds
contact details, names and streets inside kept free text; `proof` shows that
no source value is left in the copy. The names below are the package's face.
"""

from .masks import Masked, data_env, expression, install_masks, masked_frame, remove_masks
from .planning import Plan, Proposal, plan, plan_for, verdict
from .proof import prove, residual
from .rules import (
    SALT_ENV,
    Column,
    NoRules,
    Rule,
    Rules,
    RulesError,
    Salt,
    SaltMissing,
    columns,
    for_refresh,
    load,
    require_written,
    rules_path,
    salt,
    salt_finding,
    salt_status,
)
from .text import contact_leaks, personal_sources, phrase_leaks, phrases_in_source

__all__ = [
    "SALT_ENV",
    "NoRules",
    "Proposal",
    "for_refresh",
    "require_written",
    "Column",
    "Masked",
    "Plan",
    "Rule",
    "Rules",
    "RulesError",
    "Salt",
    "SaltMissing",
    "columns",
    "contact_leaks",
    "data_env",
    "expression",
    "install_masks",
    "load",
    "masked_frame",
    "personal_sources",
    "phrase_leaks",
    "phrases_in_source",
    "plan",
    "plan_for",
    "prove",
    "remove_masks",
    "residual",
    "rules_path",
    "salt",
    "salt_finding",
    "salt_status",
    "verdict",
]
