"""Fleets: named selections of targets (by name, glob or tag, or from a file a team generates),
for running one runbook across many databases."""

from __future__ import annotations

import difflib
import fnmatch

from . import config
from .errors import UnknownTarget


def names() -> list[str]:
    return sorted(config.settings().fleets)


def members(fleet: str) -> list[str]:
    """The targets `fleet` selects, in name order; refused (one line) when the fleet is unknown
    or selects nothing."""
    s = config.settings()
    spec = s.fleets.get(fleet)
    if spec is None:
        close = difflib.get_close_matches(fleet, names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        known = ", ".join(names()) or "none: add [tool.pgrunbook.fleets.NAME]"
        raise UnknownTarget(f"unknown fleet {fleet!r}{hint}; fleets: {known}")
    chosen = set(spec.get("entries", {}))
    for pattern in spec["targets"]:
        chosen.update(fnmatch.filter(s.targets, pattern))
    for tag in spec["tags"]:
        chosen.update(t for t, ts in s.targets.items() if tag in ts.get("tags", ()))
    if not chosen:
        raise UnknownTarget(
            f"fleet {fleet!r} selects no target (targets {spec['targets']}, tags"
            f" {spec['tags']}): check its patterns and the targets' tags"
        )
    return sorted(chosen)


def describe(fleet: str) -> list[dict[str, object]]:
    """Each member with what it points at, for `pgrunbook fleet list`."""
    s = config.settings()
    out = []
    for name in members(fleet):
        spec = s.targets.get(name, {})
        where = f"service {spec['service']}" if spec.get("service") else f"${spec.get('url_env')}"
        out.append(
            {
                "target": name,
                "from": where if name != "sandbox" else "the sandbox",
                "protected": bool(spec.get("protected")),
                "tags": " ".join(spec.get("tags", ())),
            }
        )
    return out
