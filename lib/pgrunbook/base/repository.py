"""The repository: a store (see `storage`) whose objects are sealed (see `sealing`).

Where backups live is a URL: `PGRUNBOOK_REPOSITORY`, else a target's `repository`, else
`[tool.pgrunbook] repository`; an `s3://` URL is a repository in object storage, anything else
(or nothing) the local backups folder as always. A remote repository holds `repository.json`
(its format, the salt its key is derived with, and a known text sealed with it, so that a wrong
key is one clear line) and is never written without a key unless the configuration says
`encrypt = false` on purpose.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
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
    Sealer,
    WrongKey,
    master_key,
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
    """Sealed objects in a store."""

    def __init__(self, store: Store, sealer: Sealer):
        self.store, self.sealer = store, sealer
        self.url = store.url

    @classmethod
    def open(
        cls, url: str, *, encrypt: bool = True, create: bool = True, lock_days: int = 0
    ) -> Repository:
        """The repository at `url`, its key checked (KeyMissing, WrongKey: one line each); with
        `lock_days`, every object written is retained that long (S3 Object Lock)."""
        store = open_store(url, lock_days=lock_days)
        store.check_lock()
        try:
            meta = json.loads(store.get(META))
        except Missing:
            if not create:
                raise RepositoryError(f"{url} is not a pgrunbook repository (no {META})") from None
            meta = cls._create(store, encrypt)
        except ValueError:
            raise RepositoryError(f"{url}/{META} is not readable JSON: damaged?") from None
        if not meta.get("encrypted"):
            return cls(store, Sealer(None))
        given = secret()
        if given is None:
            raise KeyMissing(
                f"the repository {url} is encrypted: set {KEY_ENV} or {KEY_FILE_ENV} to its key"
            )
        key = master_key(given, base64.b64decode(meta["salt"]))
        sealer = Sealer(key)
        try:
            sealer.open(META, base64.b64decode(meta["check"]))
        except Damaged:
            raise WrongKey(
                f"the key in {KEY_ENV if os.environ.get(KEY_ENV) else KEY_FILE_ENV} does not open"
                f" the repository {url}: give the key it was created with"
            ) from None
        return cls(store, sealer)

    @staticmethod
    def _create(store: Store, encrypt: bool) -> dict[str, Any]:
        meta: dict[str, Any] = {"format": 1, "encrypted": encrypt}
        if encrypt:
            given = secret()
            if given is None:
                raise KeyMissing(
                    f"a remote repository ({store.url}) is written encrypted: set {KEY_ENV} or"
                    f" {KEY_FILE_ENV} (keep the key apart from the backups: without it they"
                    " cannot be read), or set encrypt = false in the configuration on purpose"
                )
            salt = os.urandom(16)
            check = Sealer(master_key(given, salt)).seal(META, CHECK)
            meta |= {
                "kdf": "scrypt",
                "salt": base64.b64encode(salt).decode(),
                "check": base64.b64encode(check).decode(),
            }
        try:
            store.put(META, json.dumps(meta, indent=1).encode(), create_only=True)
        except Exists:  # another runner made it first: theirs stands
            return json.loads(store.get(META))
        return meta

    # -- objects ------------------------------------------------------------------------------

    def put(self, key: str, data: bytes, *, create_only: bool = False) -> Stored:
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
