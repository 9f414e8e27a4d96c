"""Objects sealed on the client before they leave: compressed (zstd), then encrypted and
authenticated (AES-256-GCM, from `cryptography`), in chunks, so that a stream of any size is
sealed and opened with bounded memory.

An object is `PGRB` + a version byte, then (encrypted) the salt of the repository key it was
sealed under and a random 16-byte salt of its own, then chunks: a 4-byte length (its top bit set
on the last chunk) and the ciphertext with its tag. The repository key is derived (scrypt) from
the secret in `PGRUNBOOK_REPOSITORY_KEY` or the file `PGRUNBOOK_REPOSITORY_KEY_FILE` and the key
salt the object carries; each object's own key from that (HKDF-SHA256) and its own salt; each
chunk's nonce is its number and whether it is the last; the object's name is authenticated with
every chunk. So every object opens with the secret alone, wherever it is copied and whatever
else is lost (pgBackRest keeps each file's salt in its own header too), and a flipped byte, a
chunk moved, an object cut short or given another object's name fails to open, naming the
object. The secret is never written anywhere.

Version 1 objects (written before objects carried their key salt) open only with the salt of
their repository's `repository.json`.
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from .errors import PgRunbookError

KEY_ENV = "PGRUNBOOK_REPOSITORY_KEY"
KEY_FILE_ENV = "PGRUNBOOK_REPOSITORY_KEY_FILE"
MAGIC = b"PGRB"
PLAIN, SEALED_V1, SEALED = 0, 1, 2  # version byte: compressed only (encrypt = false); encrypted
# under the repository's salt (the salt in repository.json only); encrypted, the salt carried
SALT = 16
CHUNK = 2**20  # plaintext bytes per chunk
LAST = 1 << 31
CHECK = b"pgrunbook repository key check"


class KeyMissing(PgRunbookError):
    "The repository is encrypted and no key is given"


class WrongKey(PgRunbookError):
    "The key given does not open the repository"


class Damaged(PgRunbookError):
    "An object of the repository was changed, cut short or damaged"


class NeedsRepositorySalt(Damaged):
    "An object written before objects carried their key salt, and no repository.json to give it"


def secret() -> bytes | None:
    """The repository's secret from the environment (a value or a file), or None."""
    if value := os.environ.get(KEY_ENV):
        return value.encode()
    if path := os.environ.get(KEY_FILE_ENV):
        try:
            with open(path, "rb") as f:
                found = f.read().strip()
        except OSError as e:
            raise KeyMissing(f"{KEY_FILE_ENV}={path}: {e.strerror}") from None
        if not found:
            raise KeyMissing(f"{KEY_FILE_ENV}={path} is empty: put the repository's key in it")
        return found
    return None


@functools.lru_cache(maxsize=8)
def master_key(secret: bytes, salt: bytes) -> bytes:
    """The repository's key: scrypt of the secret and the repository's salt (derived once per
    process: scrypt costs about 0.1 s and 32 MiB by design, and a run opens the repository for
    each listing)."""
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt  # here: remote repositories only

    return Scrypt(salt=salt, length=32, n=2**15, r=8, p=1).derive(secret)


class Sealer:
    """Seals and opens objects with one repository secret (None: compressed only, not encrypted).
    New objects are sealed under `salt`; `legacy_salt` opens version 1 objects (the salt of
    repository.json, where there is one)."""

    def __init__(
        self, secret: bytes | None, salt: bytes | None = None, legacy_salt: bytes | None = None
    ):
        self.secret, self.legacy_salt = secret, legacy_salt
        self.salt = salt if salt is not None else (os.urandom(SALT) if secret else None)

    @property
    def encrypted(self) -> bool:
        return self.secret is not None

    def _object_key(self, key_salt: bytes, salt: bytes) -> bytes:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        master = master_key(self.secret, key_salt)
        return HKDF(hashes.SHA256(), 32, salt, b"pgrunbook object").derive(master)

    # -- sealing ------------------------------------------------------------------------------

    def seal(self, name: str, data: bytes) -> bytes:
        return b"".join(self.seal_stream(name, [data]))

    def seal_stream(self, name: str, pieces: Iterable[bytes]) -> Iterator[bytes]:
        """The sealed object, piece by piece, for plaintext `pieces` of any size."""
        import zstandard  # here: remote repositories only

        compress = zstandard.ZstdCompressor(level=3).compressobj()
        chunks = _rechunk((compress.compress(p) for p in pieces), tail=lambda: compress.flush())
        if not self.encrypted:
            yield MAGIC + bytes([PLAIN])
            yield from chunks
            return
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        salt = os.urandom(SALT)
        aead = AESGCM(self._object_key(self.salt, salt))
        yield MAGIC + bytes([SEALED]) + self.salt + salt
        number, pending = 0, None
        for chunk in chunks:
            if pending is not None:
                yield _sealed(aead, name, number, pending, last=False)
                number += 1
            pending = chunk
        yield _sealed(aead, name, number, pending or b"", last=True)

    # -- opening ------------------------------------------------------------------------------

    def open(self, name: str, blob: bytes) -> bytes:
        import io

        return b"".join(self.open_stream(name, io.BytesIO(blob)))

    def open_stream(self, name: str, source: BinaryIO) -> Iterator[bytes]:
        """The plaintext of the sealed object `name` read from `source`, piece by piece; Damaged
        naming it at the first piece that does not open."""
        import zstandard

        head = _exactly(source, 5, name)
        if head[:4] != MAGIC or head[4] not in (SEALED, SEALED_V1, PLAIN):
            raise Damaged(f"{name}: not an object of a pgrunbook repository (or damaged)")
        if head[4] == PLAIN:
            if self.encrypted:
                raise Damaged(f"{name}: stored unencrypted in an encrypted repository")
            compressed: Iterator[bytes] = iter(lambda: source.read(CHUNK), b"")
        else:
            if not self.encrypted:
                raise KeyMissing(f"{name} is encrypted: set {KEY_ENV} or {KEY_FILE_ENV}")
            if head[4] == SEALED:
                key_salt = _exactly(source, SALT, name)
            elif self.legacy_salt is None:
                raise NeedsRepositorySalt(
                    f"{name} was written before objects carried their key salt: it opens only"
                    " with the salt in the repository's repository.json, which is missing"
                )
            else:
                key_salt = self.legacy_salt
            aead_key = self._object_key(key_salt, _exactly(source, SALT, name))
            compressed = self._chunks(name, source, aead_key)
        decompress = zstandard.ZstdDecompressor().decompressobj()
        try:
            for piece in compressed:
                if out := decompress.decompress(piece):
                    yield out
        except zstandard.ZstdError as e:
            raise Damaged(f"{name}: does not decompress ({e})") from None

    def _chunks(self, name: str, source: BinaryIO, key: bytes) -> Iterator[bytes]:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        aead = AESGCM(key)
        number = 0
        while True:
            header = source.read(4)
            if len(header) < 4:
                raise Damaged(f"{name}: cut short after {number} chunks (its last is missing)")
            (length,) = struct.unpack(">I", header)
            last = bool(length & LAST)
            body = _exactly(source, length & ~LAST, name)
            try:
                yield aead.decrypt(_nonce(number, last), body, name.encode())
            except InvalidTag:
                raise Damaged(
                    f"{name}: chunk {number} fails its check: the object was changed or damaged"
                ) from None
            if last:
                if source.read(1):
                    raise Damaged(f"{name}: data after its last chunk")
                return
            number += 1


def key_salt(blob: bytes) -> bytes | None:
    """The key salt an object's first bytes carry (None: not a sealed object of this version)."""
    if blob[:4] == MAGIC and len(blob) >= 5 + SALT and blob[4] == SEALED:
        return blob[5 : 5 + SALT]
    return None


def is_sealed(blob: bytes) -> bool | None:
    """Whether an object's first bytes say it is encrypted (None: not a pgrunbook object)."""
    if blob[:4] != MAGIC or len(blob) < 5 or blob[4] not in (PLAIN, SEALED, SEALED_V1):
        return None
    return blob[4] != PLAIN


def _nonce(number: int, last: bool) -> bytes:
    return struct.pack(">QI", number, 1 if last else 0)


def _sealed(aead, name: str, number: int, chunk: bytes, *, last: bool) -> bytes:
    body = aead.encrypt(_nonce(number, last), chunk, name.encode())
    return struct.pack(">I", len(body) | (LAST if last else 0)) + body


def _rechunk(pieces: Iterable[bytes], *, tail) -> Iterator[bytes]:
    """`pieces` (and then `tail()`) regrouped into chunks of CHUNK bytes, the last shorter."""
    buffer = bytearray()
    for piece in pieces:
        buffer += piece
        while len(buffer) >= CHUNK:
            yield bytes(buffer[:CHUNK])
            del buffer[:CHUNK]
    buffer += tail()
    while len(buffer) > CHUNK:
        yield bytes(buffer[:CHUNK])
        del buffer[:CHUNK]
    if buffer:
        yield bytes(buffer)


def _exactly(source: BinaryIO, n: int, name: str) -> bytes:
    data = source.read(n)
    while len(data) < n:
        more = source.read(n - len(data))
        if not more:
            raise Damaged(f"{name}: cut short")
        data += more
    return data
