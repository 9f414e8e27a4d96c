"""The errors pgrunbook raises. Each message says what is wrong and what to do next."""


class PgRunbookError(Exception):
    "Base class: the CLI prints the message on one line and exits 3"


class ConfigError(PgRunbookError):
    "The configuration (pyproject.toml / pgrunbook.toml) is invalid"


class UnknownRunbook(PgRunbookError):
    "No notebook of that name in runbooks/"


class UnknownParameter(PgRunbookError):
    "The runbook has no parameter of that name, or the value does not fit its type"


class UnknownTarget(PgRunbookError):
    "No environment of that name is configured"


class TargetNotConfigured(PgRunbookError):
    "The target's URL variable is not set"


class ConnectionFailed(PgRunbookError):
    "The server could not be reached, refused the login, or lacks the database"


class SandboxError(PgRunbookError):
    "The embedded sandbox is not in the state the command needs"


class ConfirmationRequired(PgRunbookError):
    "A destructive step on a protected target needs confirm=<target>"

    confirm_target = ""  # the target's name: what to confirm with


class SeedRefused(PgRunbookError):
    "Seeding would put user data where it must never go"


class BackupFailed(PgRunbookError):
    "The backup could not be completed; nothing claims it succeeded"


class BackupNotFound(PgRunbookError):
    "No backup of that id for the target"


class ReportNotFound(PgRunbookError):
    "No archived report matches"


class RunbookCritical(PgRunbookError):
    "A runbook recorded CRIT findings (raised under plain papermill so it exits non-zero)"


class RunbookStopped(PgRunbookError):
    "A runbook stopped at a CRIT check, before the steps that would change anything"


class ArchiveFailed(Exception):
    """The run ended but its report could not be archived (a full disk, say). Not bad input: the run
    may have changed things, which the message names; the CLI exits 2."""


class MigrationRefused(PgRunbookError):
    """A migration step that cannot be taken as asked (unknown name, a failed one unresolved)."""


class BackupUnreadable(BackupNotFound):
    "The backup is there but cannot be used: its manifest is damaged or gone"
