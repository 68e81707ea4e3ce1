"""The exceptions a user can cause. Internal invariants use assert instead."""


class TinyFoldError(Exception):
    """Base of every error tinyfold-ray raises on purpose; entry points print it as one line."""


class ConfigError(TinyFoldError, ValueError):
    """A setting has a value that is not allowed (the message names the key and what is allowed)."""


class StudySpecError(ConfigError):
    """A study file is malformed or asks for something impossible."""


class TrainingError(TinyFoldError, RuntimeError):
    """Training itself went wrong (non-finite loss, out of memory)."""


class TrialFailedError(TinyFoldError, RuntimeError):
    """A trial could not produce a result; the reason becomes the failed row's `error`."""
