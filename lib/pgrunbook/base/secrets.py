"""Keep secrets out of everything written: reports, HTML, the index, logs.

Two nets: every password known from the configured targets' URLs is replaced
wherever it appears, and anything shaped like a credential (the userinfo of a
URL, `password=...` in a conninfo string) is masked even when not known.
"""

from __future__ import annotations

import html
import json
import os
import re
from urllib.parse import quote, unquote, urlsplit

from psycopg.conninfo import conninfo_to_dict

MASK = "********"

_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)(?P<pw>[^@\s/]+)(?=@)", re.I)
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<pw>'[^']*'|\S+)", re.I)
_SECRET_ENV = re.compile(r"(URL|PASSWORD|SECRET|TOKEN|SALT|KEY)$", re.I)


def url_password(url: str) -> str | None:
    """The password carried by a connection URL, if any."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return unquote(password) if password else None


def known_secrets() -> set[str]:
    """Passwords and secret values found in this process's environment."""
    found: set[str] = set()
    for name, value in os.environ.items():
        if not value or not _SECRET_ENV.search(name):
            continue
        if "://" in value:
            if pw := url_password(value):
                found.update({pw, _quoted(pw)})
        elif "password" in value.lower() and "=" in value:  # a key=value connection string
            if pw := _conninfo_password(value):
                found.add(pw)
        elif name.upper().endswith(("PASSWORD", "SECRET", "TOKEN", "SALT", "KEY")):
            found.add(value)
    found |= {v for n in ALSO_SECRET if (v := os.environ.get(n))}
    if path := os.environ.get("PGRUNBOOK_REPOSITORY_KEY_FILE"):  # the key, not its file's name
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                found.add(f.read().strip())
        except OSError:
            pass
    return {s for s in found if len(s) >= 3}


ALSO_SECRET = ("AWS_ACCESS_KEY_ID",)  # not a secret alone, but never in a report either


def _conninfo_password(value: str) -> str | None:

    try:
        return conninfo_to_dict(value).get("password")
    except Exception:  # noqa: BLE001  not a connection string after all
        return None


def _quoted(password: str) -> str:

    return quote(password, safe="")


def redact(text: str, extra: set[str] | frozenset[str] = frozenset()) -> str:
    """`text` with every known secret and credential-shaped substring masked."""
    text = _URL_PASSWORD.sub(lambda m: m["head"] + MASK, text)
    text = _KV_PASSWORD.sub(lambda m: m["head"] + MASK, text)
    for secret in sorted(known_secrets() | set(extra), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def document_secrets() -> set[str]:
    """Known secrets in every form they take inside JSON and HTML documents."""

    forms: set[str] = set()
    for secret in known_secrets():
        forms.update(
            {
                secret,
                json.dumps(secret)[1:-1],
                html.escape(secret),
                html.escape(json.dumps(secret)[1:-1]),
            }
        )
    return forms


def redact_document(text: str) -> str:
    """`redact` for a serialized notebook or HTML page."""
    return redact(text, document_secrets())
