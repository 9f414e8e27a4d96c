"""The archive of executed runbooks and its index.

reports/index.jsonl holds one JSON line per run with the sha256 of the
report and its HTML copy. Each line also carries the hash of the line
before it, so an edited or deleted line breaks the chain and `verify` names
it, as it names a report whose bytes changed.

Two anchors outside the index catch what a chain alone cannot: the head
record (how many lines, and the hash of the last) is kept in the state
folder, beside the archive rather than in it, so a removed, emptied or cut
index, or its last lines deleted, is named; and with $PGRUNBOOK_INDEX_KEY set
the chain's hashes are HMACs under that key, so a chain rewritten by someone
without the key does not verify.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..base import config
from ..base.fileio import create_private, private_dir, sha256_file, write_atomic
from ..base.secrets import redact
from ..facts.history import index_path

GENESIS = "0" * 64


KEY_ENV = "PGRUNBOOK_INDEX_KEY"


def _line_hash(line: str, *, keyed: bool | None = None) -> str:
    """The chain link to `line`: its sha256, or its HMAC-SHA256 under the index key when there is
    one."""
    data = line.rstrip("\n").encode()
    key = os.environ.get(KEY_ENV, "")
    if keyed is None:
        keyed = bool(key)
    if keyed:
        return "hmac:" + hmac.new(key.encode(), data, hashlib.sha256).hexdigest()
    return hashlib.sha256(data).hexdigest()


def link_to(line: str, *, keyed: bool) -> str:
    """The `prev` a line following `line` carries."""
    return _line_hash(line, keyed=keyed)


def head_path() -> Path:
    """The head record of this archive: kept in the state folder, outside the archive it vouches
    for."""
    archive = hashlib.sha256(str(index_path().resolve()).encode()).hexdigest()[:16]
    return config.settings().state_dir / "index-heads" / f"{archive}.json"


def _write_head(lines: int, last: str) -> None:
    private_dir(head_path().parent)
    write_atomic(
        head_path(),
        json.dumps(
            {
                "index": str(index_path()),
                "lines": lines,
                "last": _line_hash(last) if last else GENESIS,
            }
        ),
    )


def entry_for(meta: dict[str, Any], notebook: Path, html: Path) -> dict[str, Any]:
    """One run's index record, without its link to the line before (`prev`)."""
    root = config.settings().reports_dir
    return {
        "id": str(notebook.relative_to(root).with_suffix("")),
        **{
            k: meta[k]
            for k in (
                "runbook",
                "target",
                "outcome",
                "exit_code",
                "incident",
                "operator",
                "host",
                "start",
                "end",
                "duration_s",
            )
        },
        "summary": meta.get("summary", {}),
        **({"fleet": meta["fleet"]} if meta.get("fleet") else {}),
        "figures": {  # what the site draws across runs
            f["check"]: f["value"]
            for f in meta.get("findings", [])
            if isinstance(f.get("value"), int | float) and not isinstance(f.get("value"), bool)
        },
        "thresholds": {  # and the thresholds it draws with them
            f["check"]: f["threshold"]
            for f in meta.get("findings", [])
            if f.get("threshold") and isinstance(f.get("value"), int | float)
        },
        "files": {
            "ipynb": {"path": str(notebook.relative_to(root)), "sha256": sha256_file(notebook)},
            "html": {"path": str(html.relative_to(root)), "sha256": sha256_file(html)},
        },
    }


def line_for(entry: dict[str, Any], previous: str | None) -> str:
    """The index line of `entry`, chained to the line before it (None: the first)."""
    linked = {**entry, "prev": _line_hash(previous) if previous else GENESIS}
    return redact(json.dumps(linked, sort_keys=True))


def append_index(meta: dict[str, Any], notebook: Path, html: Path) -> dict[str, Any]:
    """Add one run to the local index (under an exclusive lock, so parallel runs chain
    correctly). `archive.shared.archive_run` sends it to a shared archive instead, where one is
    configured."""
    entry = entry_for(meta, notebook, html)
    path = _open_index()
    with path.open("a+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        lines = [line for line in f.read().splitlines() if line.strip()]
        line = line_for(entry, lines[-1] if lines else None)
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
        _write_head(len(lines) + 1, line)  # still under the lock: heads follow the index in order
    return json.loads(line)


def _open_index() -> Path:
    path = index_path()
    private_dir(path.parent)
    if not path.exists():
        try:
            create_private(path)
        except FileExistsError:  # another run created it meanwhile
            pass
    return path


def mirror_lines(lines: list[str]) -> list[str]:
    """Make the local index the chain `lines` (a shared archive's, in order), under the lock:
    the lines this host has are kept, the ones after them added. The lines it had that were not
    the chain's (indexed before the archive was shared), which the caller sends up."""
    path = _open_index()
    with path.open("a+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        have = [line for line in f.read().splitlines() if line.strip()]
        if have != lines[: len(have)]:  # not a prefix: written before the archive was shared
            kept = path.with_name(f"index.before-shared-{os.getpid()}-{len(have)}.jsonl")
            write_atomic(kept, "".join(line + "\n" for line in have))  # kept, not lost
            f.seek(0)
            f.truncate()
            replaced, have = have, []
        else:
            replaced = []
        f.write("".join(line + "\n" for line in lines[len(have) :]))
        f.flush()
        os.fsync(f.fileno())
        if lines:
            _write_head(len(lines), lines[-1])
    return replaced


def table(rows: list[dict[str, Any]]):
    """Runs as a DataFrame: one row each, newest last."""
    import pandas as pd  # here: spares pandas (~270 ms) at start-up

    cols = ["id", "runbook", "target", "outcome", "start", "duration_s", "incident", "operator"]
    return pd.DataFrame([{c: r.get(c) for c in cols} for r in rows], columns=cols)


@dataclass
class Verification:
    checked: int = 0
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    broken_chain: list[int] = field(default_factory=list)
    unreadable: list[int] = field(default_factory=list)
    unindexed: list[str] = field(default_factory=list)
    index: list[str] = field(default_factory=list)  # what is wrong with the index as a whole
    where: str = ""  # a shared archive's URL (empty: the local index)
    unpushed: list[str] = field(default_factory=list)  # runs of this host not yet in `where`

    @property
    def ok(self) -> bool:
        return not (
            self.changed
            or self.missing
            or self.broken_chain
            or self.unreadable
            or self.unindexed
            or self.index
            or self.unpushed
        )

    def lines(self) -> list[str]:
        out = list(self.index)
        out += [f"changed: {p}" for p in self.changed] + [f"missing: {p}" for p in self.missing]
        out += [
            f"index line {n} is not a whole JSON record (cut short or edited)"
            for n in self.unreadable
        ]
        out += [
            f"index line {n} does not follow the line before it (edited or removed)"
            for n in self.broken_chain
        ]
        out += [
            f"unindexed: {p} (a run killed before it was archived, or a file put there)"
            for p in self.unindexed
        ]
        out += [
            f"not in the shared archive yet: {r} (kept on this host: `pgrunbook reports push`)"
            for r in self.unpushed
        ]
        verdict = "OK" if self.ok else "FAILED"
        where = f"the chain in {self.where}" if self.where else str(index_path())
        return out + [f"{verdict}: {self.checked} files checked against {where}"]


def site_pages(root: Path) -> set[str]:
    """The archive's own pages (see `archive.site`): made from the index, not runs in it."""
    pages = root / "_site"
    made = {str(p.relative_to(root)) for p in pages.rglob("*")} if pages.is_dir() else set()
    return made | {"index.html"}


def verify() -> Verification:
    """Recompute every indexed file's sha256, the chain of line hashes, and the head record; name
    files
    in the archive that the index does not know."""
    root = config.settings().reports_dir
    result = Verification()
    path = index_path()
    raw = (
        [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if path.exists()
        else []
    )
    head = _read_head()
    key_set = bool(os.environ.get(KEY_ENV))
    indexed: set[str] = set()
    files: list[dict[str, Any]] = []
    seen_key = False
    for number, line in enumerate(raw, start=1):
        try:
            entry = json.loads(line)
        except ValueError:
            result.unreadable.append(number)
            continue
        link = entry.get("prev", "")
        keyed = link.startswith("hmac:")
        if keyed and not key_set:
            result.index.append(
                f"index line {number} is chained under a key: set ${KEY_ENV} to verify it"
            )
            return result
        # once the chain is keyed, a plain link is a line written by someone without the key
        if link != (GENESIS if number == 1 else _line_hash(raw[number - 2], keyed=keyed)) or (
            seen_key and not keyed
        ):
            result.broken_chain.append(number)
        seen_key |= keyed
        for info in entry.get("files", {}).values():
            indexed.add(info["path"])
            files.append(info)
    result.checked = len(files)
    for info, digest in zip(files, _digests(root, files), strict=True):
        if digest is None:
            result.missing.append(info["path"])
        elif digest != info["sha256"]:
            result.changed.append(info["path"])
    if key_set and raw and not seen_key:
        result.index.append(
            f"${KEY_ENV} is set but no index line is chained under it: the chain was "
            "rewritten without the key, or no run was archived since the key was set"
        )
    if head is not None:
        if head["lines"] > len(raw):
            what = "is missing" if not path.exists() else f"has {len(raw)} lines"
            result.index.append(
                f"index {what}; the head record counts {head['lines']}: runs were removed"
            )
        elif (
            head["lines"]
            and _line_hash(raw[head["lines"] - 1], keyed=head["last"].startswith("hmac:"))
            != head["last"]
        ):
            result.index.append(
                f"index line {head['lines']} is not the one the head record names "
                "(the index was rewritten)"
            )
    if root.exists():
        archived = {
            str(p.relative_to(root))
            for p in root.rglob("*")
            if p.is_file() and p.suffix in (".ipynb", ".html")
        } - site_pages(root)
        result.unindexed = sorted(archived - indexed)
        if archived and head is None and not raw:
            result.index.append(
                f"{len(archived)} reports in the archive but no index and no head record"
            )
    return result


def _digests(root: Path, files: list[dict[str, Any]]) -> list[str | None]:
    """Each file's sha256 (None: it is missing), hashed on every core: hashlib lets go of the
    GIL while it hashes, so threads are enough."""

    def digest(info: dict[str, Any]) -> str | None:
        try:
            return sha256_file(root / info["path"])
        except FileNotFoundError:
            return None

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(pool.map(digest, files))


def _read_head() -> dict[str, Any] | None:
    try:
        head = json.loads(head_path().read_text())
    except (OSError, ValueError):
        return None
    return head if head.get("index") == str(index_path()) else None
