"""Errors of the PII engine, in the Runner's error tree (each says whether a retry can help)."""

from __future__ import annotations

from runner.errors import RunnerError, StartupError


class RedactError(RunnerError):
    """A batch could not be redacted; nothing of it was returned.

    `retriable` is true when the same batch can succeed later (a busy or
    restarted worker), false when it never will (input that cannot be encoded).
    """

    def __init__(self, reason: str, *, retriable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retriable = retriable


class RedactStartupError(StartupError):
    """The engine cannot start: a missing NER model, an unusable key or vault."""


class ModelMissingError(RedactStartupError):
    """`[pii] ner_model` names a spaCy pipeline that is not installed."""


class KeyConfigError(RedactStartupError):
    """A token or vault key is missing, malformed or does not open the vault."""
