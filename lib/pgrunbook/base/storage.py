"""One storage door: everything pgrunbook keeps off the database goes through a `Store`.

A repository is a URL: a local folder (`/srv/pgrunbook`, `file:///srv/pgrunbook`) or an S3
bucket and prefix (`s3://bucket/prefix`), on AWS or any S3 server (MinIO, SeaweedFS, R2,
Google Cloud Storage's S3 interface). The S3 client is boto3, with the standard credential chain
(`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, `AWS_ENDPOINT_URL`, instance and
web-identity roles): no credential is read from pgrunbook's own files, and none is ever in a
message.

What object stores need, both stores do: a put that is atomic (a reader sees the whole object or
none), `create_only` that never replaces another writer's object (S3's `If-None-Match: *`, a
hard link locally), streaming reads and writes (a multipart upload, aborted on failure, on S3),
listing by prefix, and the uploads a killed writer left behind.
"""

from __future__ import annotations

import os
import tempfile
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

from .errors import PgRunbookError
from .fileio import private_dir

PART = 8 * 2**20  # bytes per part of a multipart upload (S3's minimum is 5 MiB)

# A store that stops answering (a hung network, an overloaded gateway) fails a call within
# ATTEMPTS x (CONNECT_S + the read timeout) and botocore's backoff between attempts: with the
# defaults, about 2 minutes. After that the store is taken as down for DOWN_S: every call fails
# at once (cleanup after a failure does not wait again), and the next run removes what stays.
TIMEOUT_ENV = "PGRUNBOOK_STORE_TIMEOUT_S"  # seconds to wait for an answer (default 30)
CONNECT_S = 5
ATTEMPTS = 3
DOWN_S = 60


def read_timeout() -> float:
    """Seconds a store may take to answer one request (PGRUNBOOK_STORE_TIMEOUT_S, default 30)."""
    given = os.environ.get(TIMEOUT_ENV, "") or "30"
    try:
        seconds = float(given)
    except ValueError:
        seconds = -1
    if not 0 < seconds < 86400:
        raise StorageError(f"{TIMEOUT_ENV}={given!r}: give a number of seconds, such as 30")
    return seconds


class StorageError(PgRunbookError):
    "The repository could not be read or written"


class Exists(StorageError):
    "An object of that name is there already: it is never replaced"


class Missing(StorageError):
    "No object of that name in the repository"


@dataclass(frozen=True)
class Entry:
    key: str
    size: int
    modified: datetime


@dataclass(frozen=True)
class Pending:
    """An upload a writer started and never finished (a multipart upload on S3)."""

    key: str
    upload: str
    started: datetime


class Writer(ABC):
    """A streaming write: `write` as often as needed, then `commit`; `abort` (or an exception in a
    `with` block) leaves nothing."""

    @abstractmethod
    def write(self, data: bytes) -> None: ...

    @abstractmethod
    def commit(self) -> None: ...

    @abstractmethod
    def abort(self) -> None: ...

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()


class Store(ABC):
    url: str
    lock_days = 0  # S3 Object Lock's retention of every object written (0: none)

    @abstractmethod
    def put(self, key: str, data: bytes, *, create_only: bool = False) -> None: ...

    @abstractmethod
    def get(self, key: str) -> bytes: ...

    @abstractmethod
    def reader(self, key: str) -> BinaryIO: ...

    @abstractmethod
    def writer(self, key: str, *, create_only: bool = False) -> Writer: ...

    @abstractmethod
    def list(self, prefix: str = "", *, limit: int | None = None) -> list[Entry]:
        """The objects under `prefix` in key order (the first `limit` of them)."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def pending(self, prefix: str = "") -> list[Pending]:
        """Uploads started and never finished (a local folder's: its temporary files)."""

    @abstractmethod
    def abort_pending(self, item: Pending) -> None:
        """Remove what an unfinished upload left."""

    @property
    def remote(self) -> bool:
        return False

    def check_lock(self) -> None:  # noqa: B027 - nothing to check but in S3
        "Refuse Object Lock the store cannot give."

    def locked_until(self, key: str) -> datetime | None:
        "The date before which the object cannot be deleted (None: no retention)."
        return None


# -- a local folder ---------------------------------------------------------------------------


class LocalStore(Store):
    """Objects as files under `root`, written to a private temporary file, flushed and renamed."""

    def __init__(self, root: Path):
        self.root = root
        self.url = str(root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise StorageError(f"{key!r} is outside the repository {self.root}")
        return path

    def put(self, key: str, data: bytes, *, create_only: bool = False) -> None:
        with self.writer(key, create_only=create_only) as w:
            w.write(data)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise Missing(f"no {key} in {self.url}") from None

    def reader(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")  # noqa: SIM115 (the caller closes it)
        except FileNotFoundError:
            raise Missing(f"no {key} in {self.url}") from None

    def writer(self, key: str, *, create_only: bool = False) -> Writer:
        path = self._path(key)
        private_dir(path.parent)
        return _LocalWriter(path, create_only)

    def list(self, prefix: str = "", *, limit: int | None = None) -> list[Entry]:
        base = self._path(prefix) if prefix else self.root
        start = base if base.is_dir() else base.parent
        if not start.exists():
            return []
        found = []
        for p in sorted(start.rglob("*")):
            key = str(p.relative_to(self.root))
            if p.is_file() and key.startswith(prefix) and not p.name.startswith(".pgrb-tmp"):
                st = p.stat()
                found.append(Entry(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC)))
                if limit is not None and len(found) >= limit:
                    break
        return found

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def pending(self, prefix: str = "") -> list[Pending]:
        start = self._path(prefix) if prefix else self.root
        start = start if start.is_dir() else start.parent
        return [
            Pending(str(p.relative_to(self.root)), str(p), _mtime(p))
            for p in (sorted(start.rglob(".pgrb-tmp*")) if start.exists() else [])
        ]

    def abort_pending(self, item: Pending) -> None:
        Path(item.upload).unlink(missing_ok=True)


def _mtime(path: Path) -> datetime:
    return datetime.fromtimestamp(path.stat().st_mtime, UTC)


class _LocalWriter(Writer):
    def __init__(self, path: Path, create_only: bool):
        self.path, self.create_only = path, create_only
        fd, name = tempfile.mkstemp(prefix=".pgrb-tmp", dir=path.parent)
        self.tmp = Path(name)
        self.file = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        self.file.write(data)

    def commit(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        try:
            if self.create_only:  # a hard link fails where the name is taken: never replaced
                try:
                    os.link(self.tmp, self.path)
                except FileExistsError:
                    raise Exists(f"{self.path} exists already: it is never replaced") from None
            else:
                os.replace(self.tmp, self.path)
        finally:
            self.tmp.unlink(missing_ok=True)
        dirfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


# -- S3 ---------------------------------------------------------------------------------------


class S3Store(Store):
    """Objects under `prefix` in `bucket`; boto3's client, its credential chain, its retries."""

    def __init__(self, bucket: str, prefix: str = "", *, client=None, lock_days: int = 0):
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self._client = client
        self.lock_days = lock_days  # S3 Object Lock: every object retained this long
        self._down: tuple[float, str] | None = None  # (until when, why): see DOWN_S

    def _lock(self) -> dict:
        """What every write carries under Object Lock: COMPLIANCE retention (no credential can
        shorten it or delete the object before the date), N days from now."""
        if not self.lock_days:
            return {}
        until = datetime.now(UTC) + timedelta(days=self.lock_days)
        return {"ObjectLockMode": "COMPLIANCE", "ObjectLockRetainUntilDate": until}

    def check_lock(self) -> None:
        """Refuse (one line) Object Lock asked of a bucket that does not have it enabled."""
        if not self.lock_days:
            return
        try:
            found = self._call(
                "reading the Object Lock of", "", self.client.get_object_lock_configuration
            )["ObjectLockConfiguration"]
        except StorageError as e:
            if "ObjectLockConfigurationNotFound" not in str(e):
                raise
            found = {}
        if found.get("ObjectLockEnabled") != "Enabled":
            raise StorageError(
                f"object_lock_days = {self.lock_days}, but the bucket {self.bucket} does not have "
                "Object Lock enabled: it can only be turned on for a new bucket (aws s3api "
                "create-bucket --object-lock-enabled-for-bucket)"
            )

    def locked_until(self, key: str) -> datetime | None:
        """The date before which the object cannot be deleted (None: no retention)."""
        head = self._call("reading", key, self.client.head_object, Key=self._key(key))
        return head.get("ObjectLockRetainUntilDate")

    @property
    def remote(self) -> bool:
        return True

    @property
    def client(self):
        if self._client is None:
            import boto3  # here: only a remote repository needs it
            from botocore.config import Config

            self._client = boto3.client(
                "s3",
                config=Config(
                    retries={"max_attempts": ATTEMPTS, "mode": "standard"},
                    connect_timeout=CONNECT_S,
                    read_timeout=read_timeout(),
                    # checksums only where the operation requires one: S3 servers other than
                    # AWS's refuse the newer default headers on some calls
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                ),
            )
        return self._client

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, key: str, fn, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        if self._down is not None:
            until, why = self._down
            if time.monotonic() < until:
                raise StorageError(f"{what} {self.url}/{key} not tried: {why}")
            self._down = None
        try:
            return fn(Bucket=self.bucket, **kwargs)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise Exists(f"{self.url}/{key} exists already: it is never replaced") from None
            if code in ("NoSuchKey", "404", "NotFound"):
                raise Missing(f"no {key} in {self.url}") from None
            raise StorageError(f"{what} {self.url}/{key} failed: {code or e}") from None
        except BotoCoreError as e:
            raise self._failed(what, key, e) from None

    def _failed(self, what: str, key: str, error: Exception) -> StorageError:
        """The one line for a call that got no answer; a timeout or a lost connection takes the
        store as down for DOWN_S (see ATTEMPTS)."""
        from botocore.exceptions import ConnectionError as Unreachable
        from botocore.exceptions import ReadTimeoutError
        from urllib3.exceptions import HTTPError

        if isinstance(error, (Unreachable, ReadTimeoutError, HTTPError, OSError)):
            self._down = (
                time.monotonic() + DOWN_S,
                f"{self.url} stopped answering ({_reason(error)}): is the object store up and"
                " reachable?",
            )
            timeout = read_timeout()
            return StorageError(
                f"{what} {self.url}/{key} failed: no answer after {ATTEMPTS} attempts of"
                f" {CONNECT_S:g} s to connect and {timeout:g} s to answer ({_reason(error)}): is"
                " the object store up and reachable?"
            )
        return StorageError(f"{what} {self.url}/{key} failed: {_reason(error)}")

    def put(self, key: str, data: bytes, *, create_only: bool = False) -> None:
        extra = {"IfNoneMatch": "*"} if create_only else {}
        self._call("writing", key, self.client.put_object, Key=self._key(key), Body=data,
                   **extra, **self._lock())  # fmt: skip

    def get(self, key: str) -> bytes:
        with self.reader(key) as body:
            return body.read()

    def reader(self, key: str) -> BinaryIO:
        body = self._call("reading", key, self.client.get_object, Key=self._key(key))["Body"]
        return _Body(self, key, body)  # type: ignore[return-value]

    def writer(self, key: str, *, create_only: bool = False) -> Writer:
        return _S3Writer(self, key, create_only)

    def list(self, prefix: str = "", *, limit: int | None = None) -> list[Entry]:
        found, token = [], None
        start = len(self._key(""))
        while True:
            more = {"ContinuationToken": token} if token else {}
            if limit is not None:
                more["MaxKeys"] = min(1000, limit - len(found))
            page = self._call(
                "listing", prefix, self.client.list_objects_v2, Prefix=self._key(prefix), **more
            )
            found += [
                Entry(o["Key"][start:], o["Size"], o["LastModified"])
                for o in page.get("Contents", [])
            ]
            if not page.get("IsTruncated") or (limit is not None and len(found) >= limit):
                return found
            token = page["NextContinuationToken"]

    def delete(self, key: str) -> None:
        """Remove the object; under Object Lock (a versioned bucket) every version of it, so that
        the space is freed (a version still retained refuses: StorageError)."""
        if not self.lock_days:
            self._call("deleting", key, self.client.delete_object, Key=self._key(key))
            return
        page = self._call("listing versions of", key, self.client.list_object_versions,
                          Prefix=self._key(key))  # fmt: skip
        for v in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
            if v["Key"] == self._key(key):
                self._call("deleting", key, self.client.delete_object, Key=v["Key"],
                           VersionId=v["VersionId"])  # fmt: skip

    def pending(self, prefix: str = "") -> list[Pending]:
        page = self._call(
            "listing uploads of", prefix, self.client.list_multipart_uploads,
            Prefix=self._key(prefix),
        )  # fmt: skip
        start = len(self._key(""))
        return [
            Pending(u["Key"][start:], u["UploadId"], u["Initiated"])
            for u in page.get("Uploads", []) or []
        ]

    def abort_pending(self, item: Pending) -> None:
        self._call(
            "aborting the upload of", item.key, self.client.abort_multipart_upload,
            Key=self._key(item.key), UploadId=item.upload,
        )  # fmt: skip


class _Body:
    """An object's body as it is read: a read that gets no answer (within the read timeout) or
    loses its connection is a StorageError, as a call's failure is."""

    def __init__(self, store: S3Store, key: str, body):
        self.store, self.key, self.body = store, key, body

    def read(self, n: int = -1) -> bytes:
        from botocore.exceptions import BotoCoreError

        try:
            return self.body.read() if n is None or n < 0 else self.body.read(n)
        except (BotoCoreError, OSError) as e:
            raise self.store._failed("reading", self.key, e) from None
        except Exception as e:  # urllib3's errors of a body cut short (ProtocolError, ...)
            if type(e).__module__.startswith("urllib3"):
                raise self.store._failed("reading", self.key, e) from None
            raise

    def close(self) -> None:
        self.body.close()

    def __enter__(self) -> _Body:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _S3Writer(Writer):
    """Parts of PART bytes as a multipart upload; an object smaller than one part is one put."""

    def __init__(self, store: S3Store, key: str, create_only: bool):
        self.store, self.key, self.create_only = store, key, create_only
        self.buffer = bytearray()
        self.upload: str | None = None
        self.parts: list[dict] = []

    def write(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= PART:
            self._send(bytes(self.buffer[:PART]))
            del self.buffer[:PART]

    def _send(self, chunk: bytes) -> None:
        s = self.store
        if self.upload is None:
            self.upload = s._call(
                "starting",
                self.key,
                s.client.create_multipart_upload,
                Key=s._key(self.key),
                **s._lock(),
            )["UploadId"]
        number = len(self.parts) + 1
        done = s._call(
            "writing a part of", self.key, s.client.upload_part, Key=s._key(self.key),
            UploadId=self.upload, PartNumber=number, Body=chunk,
        )  # fmt: skip
        self.parts.append({"PartNumber": number, "ETag": done["ETag"]})

    def commit(self) -> None:
        s = self.store
        if self.upload is None:
            s.put(self.key, bytes(self.buffer), create_only=self.create_only)
            return
        if self.buffer:
            self._send(bytes(self.buffer))
            self.buffer.clear()
        extra = {"IfNoneMatch": "*"} if self.create_only else {}
        try:
            s._call(
                "completing", self.key, s.client.complete_multipart_upload, Key=s._key(self.key),
                UploadId=self.upload, MultipartUpload={"Parts": self.parts}, **extra,
            )  # fmt: skip
        except StorageError:
            self.abort()
            raise

    def abort(self) -> None:
        if self.upload is not None:
            try:
                self.store.abort_pending(Pending(self.key, self.upload, datetime.now(UTC)))
            except StorageError:
                pass  # the next run names and removes it (see `pending`)
            self.upload = None


def _reason(error: Exception) -> str:
    """One line for a client-side failure, naming the endpoint, never a credential."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "Could not connect" in text or "Connect timeout" in text:
        return f"{text}: is the object store up and reachable?"
    if "Unable to locate credentials" in text:
        return "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
    return text


# -- opening a repository -----------------------------------------------------------------------


def open_store(url: str, *, lock_days: int = 0) -> Store:
    """The store a repository URL names: `s3://bucket/prefix`, or a local folder."""
    parts = urlsplit(url)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise StorageError(f"{url!r} names no bucket: write s3://BUCKET/PREFIX")
        return S3Store(parts.netloc, parts.path, lock_days=lock_days)
    if lock_days:
        raise StorageError(
            f"object_lock_days needs a repository in S3 with Object Lock, not {url!r}"
        )
    if parts.scheme in ("", "file"):
        root = Path(parts.path if parts.scheme == "file" else url).expanduser()
        private_dir(root)
        return LocalStore(root)
    raise StorageError(f"repository {url!r}: use s3://BUCKET/PREFIX or a local folder")
