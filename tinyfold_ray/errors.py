"""The exceptions a user can cause. Internal invariants use assert instead."""


class TinyFoldError(Exception):
    """Base of every error tinyfold-ray raises on purpose; entry points print it as one line."""


class ConfigError(TinyFoldError, ValueError):
    """A setting has a value that is not allowed (the message names the key and what is allowed).

    `key` is the setting's name when the error is about one setting (the message then starts with
    "key="), so a caller that knows where the setting came from can name its full path.
    """

    def __init__(self, message: str, *, key: str | None = None):
        super().__init__(message)
        self.key = key


class StudySpecError(ConfigError):
    """A study file is malformed or asks for something impossible."""


class TrainingError(TinyFoldError, RuntimeError):
    """Training itself went wrong (non-finite loss, out of memory)."""


class TrialFailedError(TinyFoldError, RuntimeError):
    """A trial could not produce a result; the reason becomes the failed row's `error`."""


class TrialTimeoutError(TrialFailedError):
    """A trial ran past its time limit: raised by each rank that finds the deadline passed between
    steps or phases, naming the phase that ran out, the rank and its host."""

    def __init__(
        self, limit_s: float, phase: str | None = None, rank: int | None = None, host: str | None = None
    ):
        super().__init__(limit_s, phase, rank, host)  # args carry every field, so the error pickles
        self.limit_s, self.phase, self.rank, self.host = limit_s, phase, rank, host

    def __str__(self) -> str:
        where = f" in {self.phase} (rank {self.rank} on {self.host})" if self.phase else ""
        return f"the trial ran past its time limit of {self.limit_s:.0f} s{where}"


class StudyInterrupted(TinyFoldError):
    """The study was stopped (Ctrl-C) while the trial ran: it ends at once without a row, so that the
    study's next run runs it again."""


class StorageError(TinyFoldError, OSError):
    """The results location cannot be written or read."""
