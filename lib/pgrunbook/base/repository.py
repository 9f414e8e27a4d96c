"""The repository: a store (see `storage`) whose objects are sealed (see `sealing`).

Where backups live is a URL: `PGRUNBOOK_REPOSITORY`, else a target's `repository`, else
`[tool.pgrunbook] repository`; an `s3://` URL is a repository in object storage, anything else
(or nothing) the local backups folder as always. A remote repository is never written without a
key unless the configuration says `encrypt = false` on purpose.

Every object opens with the key alone (it carries the salt its key was derived with), so
`repository.json` is a check and a convenience, never the only copy of anything: it holds the
salt new objects are sealed under and a known text sealed with it, so that a wrong key is one
clear line. It is written with the first object of an empty prefix, or by `pgrunbook backups
repair`. Where objects exist and it is missing or damaged, the repository still opens for reading
(the key is proven on objects that are there) and refuses every write in one line that says how
to recover: nothing that only reads writes anything.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from . import config
from .errors import PgRunbookError
from .sealing import (
    CHECK,
    KEY_ENV,
    KEY_FILE_ENV,
    Damaged,
    KeyMissing,
    NeedsRepositorySalt,
    Sealer,
    WrongKey,
    is_sealed,
    key_salt,
    secret,
)
from .storage import Exists, Missing, Store, open_store

ENV = "PGRUNBOOK_REPOSITORY"
META = "repository.json"


class RepositoryError(PgRunbookError):
    "The repository is not set up as pgrunbook needs"


def url_for(target: str | None = None) -> str:
    """The repository URL for `target` (empty: the local backups folder)."""
    if found := os.environ.get(ENV):
        return found
    spec = config.settings().targets.get(target or "", {})
    return str(spec.get("repository") or config.settings().repository or "")


def is_remote(url: str) -> bool:
    return url.startswith("s3://")


def for_target(target) -> Repository | None:
    """The remote repository `target`'s backups live in, opened (its key checked); None where
    they live in the local backups folder."""
    name = getattr(target, "name", target)
    url = url_for(name)
    if not is_remote(url):
        return None
    return Repository.open(url, encrypt=encrypt_for(name), lock_days=lock_days_for(name))


LOCK_ENV = "PGRUNBOOK_OBJECT_LOCK_DAYS"


def lock_days_for(target: str | None = None) -> int:
    """`object_lock_days` for `target`'s repository (environment, target, global; 0: none)."""
    if found := os.environ.get(LOCK_ENV):
        value = found
    else:
        spec = config.settings().targets.get(target or "", {})
        value = spec.get("object_lock_days", config.settings().object_lock_days)
    try:
        days = int(value)
    except (TypeError, ValueError):
        raise RepositoryError(f"object_lock_days {value!r} is not a number of days") from None
    if days < 0:
        raise RepositoryError(f"object_lock_days {days} is negative: give 0 (none) or more")
    return days


def encrypt_for(target: str | None = None) -> bool:
    spec = config.settings().targets.get(target or "", {})
    return bool(spec.get("encrypt", config.settings().encrypt))


@dataclass
class Stored:
    """An object written: its name, its size in the store and the sha256 of its stored bytes."""

    key: str
    size: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "size": self.size, "sha256": self.sha256}


class Repository:
    """Sealed objects in a store. `refusal` says why it may not be written (empty: it may)."""

    def __init__(
        self, store: Store, sealer: Sealer, *, meta: dict[str, Any] | None = None,
        fresh: bool = False, refusal: str = "",
    ):  # fmt: skip
        self.store, self.sealer = store, sealer
        self.url = store.url
        self.meta, self.fresh, self.refusal = meta, fresh, refusal
        self.proven = meta is not None  # the key was proven (on repository.json, or on objects)
        self._creating = threading.Lock()

    @classmethod
    def open(cls, url: str, *, encrypt: bool = True, lock_days: int = 0) -> Repository:
        """The repository at `url`, its key checked (KeyMissing, WrongKey: one line each),
        writing nothing; with `lock_days`, every object written is retained that long (S3 Object
        Lock)."""
        store = open_store(url, lock_days=lock_days)
        store.check_lock()
        given = secret()
        try:
            raw = store.get(META)
        except Missing:
            return cls._without_meta(store, given, encrypt, f"{META} is missing")
        meta = _parsed(raw)
        if meta is not None and not meta.get("encrypted"):
            return cls(store, Sealer(None), meta=meta)
        if meta is not None:
            if given is None:
                raise KeyMissing(
                    f"the repository {url} is encrypted: set {KEY_ENV} or {KEY_FILE_ENV} to its key"
                )
            salt = base64.b64decode(meta["salt"])
            sealer = Sealer(given, salt, legacy_salt=salt)
            try:
                sealer.open(META, base64.b64decode(meta["check"]))
                return cls(store, sealer, meta=meta)
            except Damaged:
                pass  # the key, or the file: the objects there tell
        try:
            found = cls._without_meta(store, given, encrypt, f"{META} is damaged", damaged=True)
            if meta is None or found.proven:
                return found  # the key opens the backups: the file is what is damaged
        except (WrongKey, RepositoryError):
            if meta is None:
                raise
        raise WrongKey(
            f"the key in {KEY_ENV if os.environ.get(KEY_ENV) else KEY_FILE_ENV} does not open"
            f" the repository {url}: give the key it was created with"
        )

    @classmethod
    def _without_meta(
        cls, store: Store, given: bytes | None, encrypt: bool, why: str, *, damaged: bool = False
    ) -> Repository:
        """Open a repository whose repository.json is missing or damaged: a new one where the
        prefix is empty; else the key proven on objects that are there, for reading only."""
        found = [e for e in store.list("", limit=PROBE_LISTED) if not e.key.startswith(META)]
        if not found and not damaged:
            if encrypt and given is None:
                raise KeyMissing(
                    f"a remote repository ({store.url}) is written encrypted: set {KEY_ENV} or"
                    f" {KEY_FILE_ENV} (keep the key apart from the backups: without it they"
                    " cannot be read), or set encrypt = false in the configuration on purpose"
                )
            return cls(store, Sealer(given if encrypt else None), fresh=True)
        sealer = _proven(store, given, found, why) if found else Sealer(given)
        repo = cls(store, sealer, refusal=(
            f"{store.url} holds {'backups' if found else 'nothing else'} but its {why}: the key"
            " still reads every backup, and nothing is written there until it is made again:"
            f" run `pgrunbook backups repair --repository {store.url}`"
        ))  # fmt: skip
        repo.proven = bool(found)
        return repo

    def may_write(self) -> None:
        """Refuse (one line) a write or a removal in a repository that must be repaired first."""
        if self.refusal:
            raise RepositoryError(self.refusal)

    def writable(self) -> None:
        """`may_write`; and repository.json written first into an empty prefix."""
        self.may_write()
        if self.fresh:
            with self._creating:
                if self.fresh:
                    self._create()
                    self.fresh = False

    def _meta(self) -> dict[str, Any]:
        """repository.json as this key writes it: the format, and a check that tells a wrong key
        from a right one."""
        meta: dict[str, Any] = {"format": 2, "encrypted": self.sealer.encrypted}
        if self.sealer.encrypted:
            meta |= {
                "kdf": "scrypt",
                "salt": base64.b64encode(self.sealer.salt).decode(),
                "check": base64.b64encode(self.sealer.seal(META, CHECK)).decode(),
            }
        return meta

    def _create(self) -> None:
        meta = self._meta()
        try:
            self.store.put(META, json.dumps(meta, indent=1).encode(), create_only=True)
            self.meta = meta
        except Exists:  # another runner made it first: theirs stands, if our key opens it
            theirs = Repository.open(self.url, lock_days=self.store.lock_days)
            self.sealer, self.meta = theirs.sealer, theirs.meta

    def repair(self) -> list[str]:
        """Write repository.json again (the key proven on the objects there), keeping a damaged
        one beside it; what was done."""
        done = []
        if not self.refusal and self.meta is not None:
            return done
        try:
            old = self.store.get(META)
        except Missing:
            old = None
        if old is not None:
            kept = f"{META}.damaged"
            self.store.put(kept, old)
            done.append(f"the damaged {META} kept as {kept}")
        meta = self._meta()
        self.store.put(META, json.dumps(meta, indent=1).encode(), create_only=old is None)
        self.meta, self.refusal, self.fresh = meta, "", False
        done.append(f"{META} written again, its check sealed with the key that opens the backups")
        return done

    # -- objects ------------------------------------------------------------------------------

    def put(self, key: str, data: bytes, *, create_only: bool = False) -> Stored:
        self.writable()
        blob = self.sealer.seal(key, data)
        self.store.put(key, blob, create_only=create_only)
        return Stored(key, len(blob), hashlib.sha256(blob).hexdigest())

    def get(self, key: str) -> bytes:
        return b"".join(self.read(key))

    def put_json(self, key: str, value: Any, *, create_only: bool = False) -> Stored:
        return self.put(key, json.dumps(value, indent=1, sort_keys=True).encode(),
                        create_only=create_only)  # fmt: skip

    def get_json(self, key: str) -> Any:
        try:
            return json.loads(self.get(key))
        except ValueError:
            raise Damaged(f"{key}: not the JSON it was written as") from None

    def write(self, key: str, pieces: Iterable[bytes], *, create_only: bool = True) -> Stored:
        """Seal `pieces` into one object as they come (bounded memory); what it stored."""
        self.writable()
        digest, size = hashlib.sha256(), 0
        with self.store.writer(key, create_only=create_only) as out:
            for blob in self.sealer.seal_stream(key, pieces):
                digest.update(blob)
                size += len(blob)
                out.write(blob)
        return Stored(key, size, digest.hexdigest())

    def read(self, key: str) -> Iterator[bytes]:
        """The plaintext of `key`, piece by piece."""
        with self.store.reader(key) as source:
            yield from self.sealer.open_stream(key, source)

    def parts(self, prefix: str, *, size: int = 32 * 2**20, threads: int = 3) -> Parts:
        """A file-like writer cutting what is written into objects `prefix`part-00001, ... of
        `size` bytes, each sealed and uploaded on one of `threads` threads while writing goes on
        (at most threads + 1 parts in memory)."""
        self.writable()
        return Parts(self, prefix, size, threads)

    def read_all(self, parts: list[dict[str, Any]], *, ahead: int = 2) -> Iterator[bytes]:
        """The plaintext of several objects in order (each a `Stored.to_dict()`): the next ones
        fetched, checked against their size and sha256, and opened on other threads while the
        current one is consumed (`ahead` in memory at most); a part is given only whole and
        checked."""
        from concurrent.futures import ThreadPoolExecutor

        def fetch(part: dict[str, Any]) -> list[bytes]:
            with self.store.reader(part["key"]) as body:
                blob = body.read()
            checked = _Checked(io.BytesIO(blob), part["key"], part)
            opened = list(self.sealer.open_stream(part["key"], checked))
            checked.finish()
            return opened

        with ThreadPoolExecutor(max_workers=ahead) as pool:
            pending = [pool.submit(fetch, p) for p in parts[:ahead]]
            for n in range(len(parts)):
                opened = pending.pop(0).result()
                if n + ahead < len(parts):
                    pending.append(pool.submit(fetch, parts[n + ahead]))
                yield from opened


PROBE_LISTED = 200  # objects listed to tell an empty prefix and to prove a key on
PROBE_TRIED = 4  # of them, the smallest opened with the key
PROBE_MAX = 2**20  # bytes: larger objects are not fetched to prove a key


def _parsed(raw: bytes) -> dict[str, Any] | None:
    try:
        meta = json.loads(raw)
    except ValueError:
        return None
    ok = isinstance(meta, dict) and (not meta.get("encrypted") or {"salt", "check"} <= set(meta))
    return meta if ok else None


def _proven(store: Store, given: bytes | None, found: list, why: str) -> Sealer:
    """A sealer whose key opens objects of `found` (its salt that of the first opened), or the
    one line that says why none opens."""
    tried = sorted((e for e in found if e.size <= PROBE_MAX), key=lambda e: e.size)
    tried = tried[:PROBE_TRIED]
    blobs = {e.key: store.get(e.key) for e in tried}
    if not blobs:
        raise RepositoryError(
            f"{store.url}: its {why} and no object is small enough to prove a key"
        )
    if not any(is_sealed(b) for b in blobs.values()):
        return Sealer(None)
    if given is None:
        raise KeyMissing(
            f"the repository {store.url} is encrypted: set {KEY_ENV} or {KEY_FILE_ENV} to its key"
        )
    old = 0
    for key, blob in blobs.items():
        sealer = Sealer(given, key_salt(blob))
        try:
            sealer.open(key, blob)
            return sealer
        except NeedsRepositorySalt:
            old += 1
        except Damaged:
            continue
    if old == len(blobs):
        raise RepositoryError(
            f"{store.url}: its {why}, and its objects were written before they carried their key"
            f" salt: put back a copy of {META} to read them"
        )
    raise WrongKey(
        f"the key in {KEY_ENV if os.environ.get(KEY_ENV) else KEY_FILE_ENV} opens none of the"
        f" {len(blobs)} objects tried in {store.url} (and its {why}): give the key it was"
        " written with"
    )


class Parts:
    """See `Repository.parts`. `close()` waits for every upload and gives what was stored, in
    order; a failed upload raises from the `write` that follows it or from `close`."""

    def __init__(self, repo: Repository, prefix: str, size: int, threads: int):
        from concurrent.futures import ThreadPoolExecutor

        self.repo, self.prefix, self.size = repo, prefix, size
        self.pool = ThreadPoolExecutor(max_workers=threads)
        self.threads, self.running, self.done = threads, set(), []
        self.buffer, self.number = bytearray(), 0

    def write(self, data: bytes) -> int:
        self.buffer += data
        while len(self.buffer) >= self.size:
            self._send(bytes(self.buffer[: self.size]))
            del self.buffer[: self.size]
        return len(data)

    def _send(self, data: bytes) -> None:
        from concurrent.futures import FIRST_EXCEPTION, wait

        self.number += 1
        key = f"{self.prefix}part-{self.number:05d}"
        self.running.add(self.pool.submit(lambda: (key, self.repo.write(key, [data]))))
        if len(self.running) >= self.threads:
            finished, self.running = wait(self.running, return_when=FIRST_EXCEPTION)
            self.done += [f.result() for f in finished]  # a failed upload raises here

    def close(self) -> list[Stored]:
        from concurrent.futures import wait

        try:
            if self.buffer or not self.number:
                self._send(bytes(self.buffer))
                self.buffer.clear()
            self.done += [f.result() for f in wait(self.running)[0]]
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
        return [stored for _, stored in sorted(self.done, key=lambda d: d[0])]

    def abandon(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class _Checked:
    """Stored bytes hashed as they are read and held to a recorded size and sha256."""

    def __init__(self, source, key: str, expect: dict[str, Any]):
        self.source, self.key, self.expect = source, key, expect
        self.digest, self.size = hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.source.read(n)
        self.digest.update(data)
        self.size += len(data)
        return data

    def finish(self) -> None:
        self.read()  # anything after the object's end counts too
        if self.size != self.expect["size"] or self.digest.hexdigest() != self.expect["sha256"]:
            raise Damaged(
                f"{self.key}: {self.size} bytes stored, sha256 {self.digest.hexdigest()[:16]}..., "
                f"the manifest records {self.expect['size']} and {self.expect['sha256'][:16]}..."
            )
