"""Alerts that reach people, as Alertmanager and check_postgres do it: on a change of state.

Channels are declared as targets are, `[notify.channels.NAME]` with `url_env` (the variable that
holds an Apprise URL: Slack, `mailto://`, Teams, PagerDuty, Telegram, ntfy, `json://`: the URL
is a secret, read from the environment only), `min_status` (WARN or CRIT), optional `targets`
and `runbooks` (names or shell patterns) and `repeat_hours`. After each run, per channel and per
target, runbook and check:

- a check that turns WARN/CRIT (at or above the channel's level), or worse, is in one message;
- the same state again: nothing, until `repeat_hours` have passed since it was last sent;
- back under the level: one "resolved" line naming what recovered and how long it lasted;
- a run that failed (FAILED) is a problem of its own ("the run"); a failed migration, backup,
  restore, refresh or drill (CRIT or FAILED) is sent at once, whatever was sent before.

What was sent is kept in the archive folder (`.alerts/state.json`, under a lock, replaced
atomically), so two runs at once never send the same news twice. A channel that cannot be
reached is tried twice more; what was not delivered is not recorded as sent (the next run tries
again) and is said in the run's report. Delivery never changes a run's verdict.
"""

from __future__ import annotations

import fcntl
import fnmatch
import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..base import config
from ..base.errors import ConfigError
from ..base.fileio import private_dir, write_atomic
from ..base.findings import Finding, Status, first_step
from ..base.secrets import redact
from . import shared

IMMEDIATE = {"migrate", "backup", "restore", "staging_refresh", "dr_drill", "pitr", "pitr_restore"}
TRIES = 3
RUN = "the run"  # the pseudo-check of a run that failed


@dataclass(frozen=True)
class Channel:
    name: str
    url_env: str
    min_status: Status
    targets: tuple[str, ...]
    runbooks: tuple[str, ...]
    repeat_hours: float

    def matches(self, target: str, runbook: str) -> bool:
        def any_of(patterns: tuple[str, ...], name: str) -> bool:
            return not patterns or any(fnmatch.fnmatchcase(name, p) for p in patterns)

        return any_of(self.targets, target) and any_of(self.runbooks, runbook)

    def alerting(self, status: Status) -> bool:
        return status in (Status.WARN, Status.CRIT) and status.severity >= self.min_status.severity

    def url(self) -> str:
        found = os.environ.get(self.url_env, "")
        if not found:
            raise ConfigError(
                f"channel {self.name!r}: ${self.url_env} is not set (it holds the channel's "
                "Apprise URL, e.g. slack://... or mailto://...)"
            )
        return found


def channels() -> list[Channel]:
    """The configured channels; ConfigError (one line) for one that is not well formed."""
    declared = config.settings().notify.get("channels", {}) or {}
    found = []
    for name, spec in declared.items():
        if not isinstance(spec, dict) or not spec.get("url_env"):
            raise ConfigError(
                f'channel {name!r} needs url_env = "VARIABLE" (the variable holding its '
                "Apprise URL) in [notify.channels]"
            )
        level = str(spec.get("min_status", "CRIT")).upper()
        if level not in ("WARN", "CRIT"):
            raise ConfigError(f"channel {name!r}: min_status {level!r} is not WARN or CRIT")
        try:
            repeat = float(spec.get("repeat_hours", 24))
        except (TypeError, ValueError):
            raise ConfigError(f"channel {name!r}: repeat_hours is not a number") from None
        found.append(
            Channel(
                name, str(spec["url_env"]), Status[level], tuple(spec.get("targets", ())),
                tuple(spec.get("runbooks", ())), repeat,
            )
        )  # fmt: skip
    return found


# -- state ------------------------------------------------------------------------------------


def state_path() -> Path:
    return config.settings().reports_dir / ".alerts" / "state.json"


class _Locked:
    """The state file, read and written under an exclusive lock."""

    def __enter__(self) -> dict[str, Any]:
        path = state_path()
        private_dir(path.parent)
        self.lock = open(path.with_suffix(".lock"), "a+")  # noqa: SIM115 - closed on exit
        fcntl.flock(self.lock, fcntl.LOCK_EX)
        try:
            self.state = json.loads(path.read_text())
        except (OSError, ValueError):
            self.state = {}
        return self.state

    def __exit__(self, *exc) -> None:
        try:
            write_atomic(state_path(), json.dumps(self.state, indent=1, sort_keys=True))
        finally:
            self.lock.close()


def _key(target: str, runbook: str, check: str) -> str:
    return f"{target} / {runbook} / {check}"


# -- deciding ---------------------------------------------------------------------------------


@dataclass
class Message:
    channel: Channel
    title: str
    body: str
    sent: dict[str, dict[str, Any]]  # the state to record once delivered


def _since(at: str, now: float) -> str:
    hours = (now - datetime.fromisoformat(at).timestamp()) / 3600
    return f"{hours * 60:.0f} min" if hours < 1 else f"{hours:.1f} h"


def decide(
    channel: Channel, known: dict[str, Any], run: dict[str, Any], findings: list[Finding],
    *, now: float,
) -> Message | None:  # fmt: skip
    """The message a run means for a channel (None: nothing new), and what it records. A fleet's
    report is the fleet's digest: its checks are the member targets (those the channel's filters
    take), each with its run's outcome."""
    target, runbook = run["target"], run["runbook"]
    at = datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds")
    checks = list(findings)
    if members := run.get("members_runbook"):
        checks = [f for f in findings if f.check != "fleet" and channel.matches(f.check, members)]
        runbook = f"{runbook} of {members}"  # a fleet's digest per runbook it ran
    if run["outcome"] == "FAILED":
        checks.append(Finding(RUN, Status.CRIT, f"the run failed: {run.get('error') or '?'}"))
    at_once = runbook in IMMEDIATE and run["outcome"] in ("CRIT", "FAILED")
    problems, resolved, record = [], [], {}
    seen = set()
    for f in checks:
        key = _key(target, runbook, f.check)
        seen.add(key)
        before = known.get(key)
        if channel.alerting(f.status):
            same = before is not None and before["status"] == f.status.name
            due = before is None or not same or at_once or (
                now - datetime.fromisoformat(before["sent"]).timestamp()
                >= channel.repeat_hours * 3600
            )  # fmt: skip
            since = before["since"] if same else at
            if due:
                problems.append((f, since))
                record[key] = {"status": f.status.name, "since": since, "sent": at}
        elif before is not None:
            resolved.append((f.check, before))
            record[key] = None
    for key, before in known.items():  # a check the run no longer reports: over, too
        if key.startswith(_key(target, runbook, "")) and key not in seen and before is not None:
            if run["outcome"] != "FAILED":  # a failed run saw nothing: that says nothing
                resolved.append((key.rsplit(" / ", 1)[1], before))
                record[key] = None
    if not problems and not resolved:
        return None
    problems.sort(key=lambda p: -p[0].status.severity)
    worst = problems[0][0].status.name if problems else "RESOLVED"
    what = [f"{len(problems)} alerting"] if problems else []
    what += [f"{len(resolved)} resolved"] if resolved else []
    about = f"{members} on {target}" if members else f"{runbook} on {target}"
    title = f"[{worst}] {about}: {', '.join(what)}"
    lines = []
    for f, since in problems:
        line = f"{f.status.name} {f.check}: {f.summary}"
        if f.threshold:
            line += f" (threshold: {f.threshold})"
        lines.append(line + f" [{f.status.name} for {_since(since, now)}]")
        if first := first_step(f.check, target):
            lines.append(f"  first: {first}")
    for check, before in resolved:
        lines.append(
            f"RESOLVED {check}: back to normal after {_since(before['since'], now)} "
            f"{before['status']}"
        )
    lines.append(f"Report: {run['link']}")
    return Message(channel, redact(title), redact("\n".join(lines)), record)


# -- sending ----------------------------------------------------------------------------------


def send(channel: Channel, title: str, body: str) -> str | None:
    """Deliver one message (retried); None when delivered, else why not, without the URL."""
    import apprise  # here: only runs that alert need it

    url = channel.url()
    box = apprise.Apprise()
    if not box.add(url):
        return f"${channel.url_env} is not an Apprise URL this version knows"
    why = ""
    for attempt in range(TRIES):
        with apprise.LogCapture(level=apprise.logging.WARNING) as logs:
            if box.notify(title=title, body=body):
                return None
        said = [x for x in logs.getvalue().splitlines() if x.strip()]
        why = said[-1].split(" - ", 2)[-1] if said else "not delivered"
        if attempt + 1 < TRIES:
            time.sleep(0.5 * (attempt + 1))
    return _without(why, url)


def _without(text: str, url: str) -> str:
    """`text` with nothing of `url` that could be a secret (the URL, its credentials, its
    path and query)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    for secret in (url, parts.password, parts.username, parts.path.strip("/"), parts.query):
        if secret and len(secret) > 3:
            text = text.replace(secret, "***")
    return redact(text)


HEARTBEAT = "backup"  # the runbook whose every run pings the heartbeat service


def heartbeat(run: dict[str, Any]) -> str | None:
    """A backup run pings the heartbeat URL in the variable `heartbeat_url_env` names ([notify],
    or the target's own): a GET of it on success, of it + "/fail" on failure (healthchecks.io's
    convention), so an outside service notices when the pings stop (the scheduler died).
    What went wrong, in words, or None."""
    import urllib.request

    if run["runbook"] != HEARTBEAT:
        return None
    spec = config.settings().targets.get(run["target"], {})
    name = spec.get("heartbeat_url_env") or config.settings().notify.get("heartbeat_url_env")
    url = os.environ.get(str(name or ""), "")
    if not url:
        return None
    if run["outcome"] not in ("OK", "WARN"):
        url = url.rstrip("/") + "/fail"
    why = ""
    for attempt in range(TRIES):
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - the team's URL
                if answer.status < 400:
                    return None
                why = f"HTTP {answer.status}"
        except OSError as e:
            why = str(getattr(e, "reason", e))
        if attempt + 1 < TRIES:
            time.sleep(0.5 * (attempt + 1))
    return f"heartbeat ping not delivered: {_without(why, url)}"


def _concerns(channel: Channel, run: dict[str, Any]) -> bool:
    if members := run.get("members_runbook"):  # a fleet's digest: any member the channel takes
        return any(channel.matches(t, members) for t in run.get("members", ()))
    return channel.matches(run["target"], run["runbook"])


def after_run(
    run: dict[str, Any], findings: list[Finding], *, repo: object = shared.LOOK
) -> list[str]:
    """Send what this run means to every channel it concerns, and its heartbeat; what was not
    delivered, in words (for the run's report). Never raises for a channel: an alert is not the
    run. `repo`: the shared archive as the caller opened it (None: there is none; left out: it
    is looked up)."""
    notes = [n for n in [heartbeat(run)] if n]
    if run.get("in_fleet"):  # the fleet's report sends one digest for all its runs
        return notes
    try:
        every = [c for c in channels() if _concerns(c, run)]
    except ConfigError as e:
        return [*notes, f"no alert sent: {e}"]
    if not every:
        return notes
    now = time.time()
    if repo is shared.LOOK:
        repo = shared.repository()
    if repo is not None:  # runners thrown away after each job share what was sent
        return notes + _shared_round(repo, every, run, findings, now=now)
    with _Locked() as state:
        for channel in every:
            known = state.setdefault(channel.name, {})
            message = decide(channel, known, run, findings, now=now)
            if message is None:
                continue
            failed = _deliver(message)
            if failed:
                notes.append(failed)
                continue
            _apply(known, message.sent)
    return notes


def _deliver(message: Message) -> str | None:
    try:
        failed = send(message.channel, message.title, message.body)
    except ConfigError as e:
        failed = str(e)
    return f"alert to {message.channel.name} not delivered: {failed}" if failed else None


def _apply(known: dict[str, Any], sent: dict[str, Any]) -> None:
    for key, value in sent.items():
        if value is None:
            known.pop(key, None)
        else:
            known[key] = value


SHARED_STATE = "alerts/state/"  # in a shared archive: numbered states, each written create-only


def _latest(repo) -> tuple[int, dict[str, Any]]:
    numbers = [int(e.key[len(SHARED_STATE):]) for e in repo.store.list(SHARED_STATE)
               if e.key[len(SHARED_STATE):].isdigit()]  # fmt: skip
    if not numbers:
        return 0, {}
    return max(numbers), repo.get_json(f"{SHARED_STATE}{max(numbers):010d}")


def _shared_round(
    repo, every: list[Channel], run: dict[str, Any], findings: list[Finding], *, now: float
) -> list[str]:
    """The alert state in the shared archive's repository, as a sequence of states each written
    create-only: a runner claims what it is about to send by writing the next state, and only
    then sends; one that loses the race decides again from the state the winner wrote, so two
    runners never send the same news. What was not delivered is given back in a further state,
    so the next run tries again."""
    import copy

    from ..base.storage import Exists

    for _ in range(50):
        number, state = _latest(repo)
        claimed, planned = copy.deepcopy(state), []
        for channel in every:
            known = claimed.setdefault(channel.name, {})
            if (message := decide(channel, known, run, findings, now=now)) is not None:
                planned.append((message, {k: known.get(k) for k in message.sent}))
                _apply(known, message.sent)
        if not planned:
            return []
        try:
            repo.put_json(f"{SHARED_STATE}{number + 1:010d}", claimed, create_only=True)
        except Exists:
            continue
        notes, undo = [], []
        for message, before in planned:
            if failed := _deliver(message):
                notes.append(failed)
                undo.append((message.channel.name, before))
        while undo:  # give back what was not delivered
            number, state = _latest(repo)
            for name, before in undo:
                _apply(state.setdefault(name, {}), before)
            try:
                repo.put_json(f"{SHARED_STATE}{number + 1:010d}", state, create_only=True)
                undo = []
            except Exists:
                continue
        return notes
    return ["no alert sent: the shared alert state kept changing under this run"]


def status_lines() -> list[str]:
    """Per channel, target, runbook and check: the state last alerted, and when."""
    repo = shared.repository()
    try:
        state = _latest(repo)[1] if repo is not None else json.loads(state_path().read_text())
    except (OSError, ValueError):
        state = {}
    lines = []
    for channel, known in sorted(state.items()):
        for key, value in sorted(known.items()):
            lines.append(f"{channel}: {key}: {value['status']} since {value['since']}, "
                         f"last sent {value['sent']}")  # fmt: skip
    return lines or ["nothing alerted yet"]
