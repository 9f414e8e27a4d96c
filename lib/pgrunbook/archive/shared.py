"""The audit archive in a repository, shared by every runner that writes to it.

With `reports = "s3://bucket/prefix"` in the configuration (or `PGRUNBOOK_REPORTS`), each run's
notebook and HTML go to the repository under their archive paths (`files/<runbook>/<id>.ipynb`,
create-only, sealed as every object there is), and its index line is appended to the chain:
`chain/0000000001`, `chain/0000000002`, ..., each object one line linked to the one before it
(see `archive.reports`). An append takes the next number with a create-only write; a runner
that loses the race to another reads the new last line and tries the number after it, so many
runners (a fleet on Airflow, two cron hosts) write one chain with no line lost or forked.

The local reports folder is this host's copy: after a run, its index mirrors the chain (so
trends and the site see every runner's runs); `mirror` also fetches the reports this host does
not have, and `verify` checks the repository itself from any machine: every number present,
every link, every file's sha256 as read back.

Nothing is left behind on this host for good: a run whose report could not go up (the store
down), and the runs this host indexed before the archive was shared, wait in its outbox
(`.outbox/` in the reports folder) and go up, in order, at the start of the next run or with
`pgrunbook reports push`; until then `verify` names them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..base import config
from ..base.errors import ArchiveFailed
from ..base.fileio import private_dir, write_atomic
from ..base.repository import Repository
from ..base.storage import Exists, Missing, StorageError
from . import reports

ENV = "PGRUNBOOK_REPORTS"
CHAIN = "chain/"
FILES = "files/"
TRIES = 200  # appends lost to other runners before giving up (each retry reads the new end)


def url() -> str:
    return os.environ.get(ENV) or config.settings().reports


def repository() -> Repository | None:
    """The shared archive, opened (its key checked); None where reports stay in the local folder
    only."""
    found = url()
    if not found:
        return None
    from ..base.repository import lock_days_for

    return Repository.open(found, encrypt=config.settings().encrypt, lock_days=lock_days_for())


def _number(key: str) -> int:
    return int(key.rsplit("/", 1)[-1])


def chain_keys(repo: Repository) -> list[str]:
    return sorted((e.key for e in repo.store.list(CHAIN) if e.key[len(CHAIN) :].isdigit()),
                  key=_number)  # fmt: skip


def _get_lines(repo: Repository, keys: list[str]) -> list[str]:
    def one(key: str) -> str:
        return repo.get(key).decode()

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, keys))


LOOK = object()  # "the shared archive, opened here": a caller that opened it passes it instead


def archive_run(
    meta: dict[str, Any], notebook: Path, html: Path, repo: Repository | None | object = LOOK
) -> dict[str, Any]:
    """Index one archived run: in the shared archive where there is one, else in the local index
    only (`reports.append_index`)."""
    if repo is LOOK:
        repo = repository()
    if repo is None:
        return reports.append_index(meta, notebook, html)
    return publish(repo, reports.entry_for(meta, notebook, html), [notebook, html])


def publish(repo: Repository, entry: dict[str, Any], files: list[Path]) -> dict[str, Any]:
    """Put a run's files and append its line to the chain; the local index then mirrors the
    chain. ArchiveFailed (the run's local copy named) where the repository will not take it: the
    run then waits in the outbox (see `push`)."""
    try:
        line = _publish(repo, entry)
        sync_index(repo)
    except Exception as e:  # noqa: BLE001 - any failure: the run is kept here and said so
        _keep(entry)
        raise ArchiveFailed(
            f"the report was kept in {files[0].parent} only, not yet in the shared archive "
            f"{repo.url}: {_reason(e)}; it goes up with the next run, or `pgrunbook reports push`"
        ) from None
    return json.loads(line)


def _reason(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _publish(repo: Repository, entry: dict[str, Any], known: set[str] | None = None) -> str:
    """The run's files put (one already there with the same bytes is fine: an earlier try put
    it), then its line appended unless the chain has it (`known`: the ids there)."""
    root = config.settings().reports_dir
    for info in entry.get("files", {}).values():
        data = (root / info["path"]).read_bytes()
        try:
            repo.put(FILES + info["path"], data, create_only=True)
        except Exists:
            if _sha256(repo.get(FILES + info["path"])) != _sha256(data):
                raise ArchiveFailed(
                    f"{repo.url}/{FILES}{info['path']} holds other bytes than this host's report"
                ) from None
    if known is not None and entry["id"] in known:
        return ""
    return _append(repo, entry)


def outbox() -> Path:
    """This host's runs waiting to go up to the shared archive (see `push`)."""
    return config.settings().reports_dir / ".outbox"


def _keep(entry: dict[str, Any]) -> None:
    folder = private_dir(outbox())
    name = f"{time.time_ns():020d}-{entry['id'].replace('/', '__')}.json"
    write_atomic(folder / name, json.dumps(entry))


def waiting() -> list[tuple[Path, dict[str, Any]]]:
    """The outbox in the order its runs were kept: (its file, the run's index record)."""
    folder = outbox()
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            found.append((path, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue
    return found


def push(repo: Repository) -> tuple[list[str], list[str]]:
    """Send the outbox up, in order: (the run ids now in the shared archive, what stays and
    why). A store out of reach stops it (the rest waits for the next try); a run whose report
    this host no longer has stays, named."""
    items = waiting()
    if not items:
        return [], []
    known = {json.loads(line)["id"] for line in _get_lines(repo, chain_keys(repo))}
    pushed, stays = [], []
    for n, (path, entry) in enumerate(items):
        try:
            _publish(repo, entry, known)
        except (StorageError, ArchiveFailed) as e:
            stays += [f"{e2['id']}: {_reason(e)}" for _, e2 in items[n:]]
            break
        except OSError as e:
            stays.append(f"{entry['id']}: its report cannot be read here ({_reason(e)})")
            continue
        known.add(entry["id"])
        path.unlink(missing_ok=True)
        pushed.append(entry["id"])
    if pushed:
        sync_index(repo)
    return pushed, stays


def _append(repo: Repository, entry: dict[str, Any]) -> str:
    for _ in range(TRIES):
        keys = chain_keys(repo)
        last = _get_lines(repo, keys[-1:])
        line = reports.line_for(entry, last[0] if last else None)
        number = _number(keys[-1]) + 1 if keys else 1
        try:
            repo.put(f"{CHAIN}{number:010d}", line.encode(), create_only=True)
            return line
        except Exists:
            time.sleep(random.uniform(0, 0.05))  # another runner took it: read the new end
    raise ArchiveFailed(f"{TRIES} runners appended to {repo.url} before this one could")


def sync_index(repo: Repository) -> int:
    """The local index made the chain's mirror (fetching only the lines it lacks); the lines."""
    path = reports.index_path()
    local = [x for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    keys = chain_keys(repo)
    n = len(local)
    if n and n <= len(keys) and _get_lines(repo, [keys[n - 1]]) == local[-1:]:
        lines = local + _get_lines(repo, keys[n:])  # the lines are linked: the rest matches too
    else:
        lines = _get_lines(repo, keys)
    replaced = reports.mirror_lines(lines)
    if replaced:  # indexed here before the archive was shared: they go up too (see `push`)
        known = {json.loads(line).get("id") for line in lines}
        for line in replaced:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            entry.pop("prev", None)
            if entry.get("id") not in known:
                _keep(entry)
    return len(lines)


def mirror(repo: Repository) -> int:
    """The index and every report of the shared archive in the local reports folder (those this
    host has and whose sha256 matches are not fetched again): what the site is built from. The
    number of reports fetched."""
    sync_index(repo)
    root = config.settings().reports_dir
    wanted = []
    for entry in _entries():
        for info in entry.get("files", {}).values():
            path = root / info["path"]
            if not (path.exists() and _sha256(path.read_bytes()) == info["sha256"]):
                wanted.append(info)

    def fetch(info: dict[str, Any]) -> None:
        from ..base.fileio import private_dir, write_atomic

        data = repo.get(FILES + info["path"])
        private_dir((root / info["path"]).parent)
        write_atomic(root / info["path"], data)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(fetch, wanted))
    return len(wanted)


def _entries() -> list[dict[str, Any]]:
    from ..facts import history

    return history.entries()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verify(repo: Repository) -> reports.Verification:
    """The shared archive checked where it is: every chain number from 1 to the last present,
    each line a JSON record linked to the one before, each file there with the sha256 its line
    records (read back and opened: a changed object fails its seal, and is named), and no
    report the chain does not know."""
    result = reports.Verification()
    keys = chain_keys(repo)
    numbers = [_number(k) for k in keys]
    if keys and numbers != list(range(1, numbers[-1] + 1)):
        gone = sorted(set(range(1, numbers[-1] + 1)) - set(numbers))
        result.index.append(
            f"chain entries {', '.join(map(str, gone[:10]))} are missing from {repo.url}: "
            "runs were removed"
        )
    lines = _get_lines(repo, keys)
    keyed = bool(os.environ.get(reports.KEY_ENV))
    files, previous = [], None
    for number, line in zip(numbers, lines, strict=True):
        try:
            entry = json.loads(line)
        except ValueError:
            result.unreadable.append(number)
            previous = line
            continue
        link = entry.get("prev", "")
        if link.startswith("hmac:") and not keyed:
            result.index.append(
                f"chain entry {number} is linked under a key: set ${reports.KEY_ENV} to verify it"
            )
            return result
        keyed_link = link.startswith("hmac:")
        expected = reports.link_to(previous, keyed=keyed_link) if previous else reports.GENESIS
        if link != expected:
            result.broken_chain.append(number)
        previous = line
        files += list(entry.get("files", {}).values())
    result.checked = len(files)

    def digest(info: dict[str, Any]) -> str | None:
        try:
            return _sha256(repo.get(FILES + info["path"]))
        except Missing:
            return None
        except Exception:  # noqa: BLE001 - damaged (fails its seal): named as changed
            return "damaged"

    with ThreadPoolExecutor(max_workers=8) as pool:
        digests = list(pool.map(digest, files))
    for info, found in zip(files, digests, strict=True):
        if found is None:
            result.missing.append(info["path"])
        elif found != info["sha256"]:
            result.changed.append(info["path"])
    known = {info["path"] for info in files}
    stored = {e.key[len(FILES) :] for e in repo.store.list(FILES)}
    result.unindexed = sorted(stored - known)
    result.where = repo.url
    result.unpushed = [entry["id"] for _, entry in waiting()]
    return result
