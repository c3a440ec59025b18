"""A small error tree. Each error says whether retrying the same thing can succeed."""

from __future__ import annotations


class RunnerError(Exception):
    """Base of every error the Runner raises on purpose."""

    retriable: bool = False


class ConfigError(RunnerError):
    """runner.toml or the environment holds an unknown key, a wrong type or a bad value."""


class StartupError(RunnerError):
    """A dependency (Redis, a model, a key file) is missing or unsafe; the Runner will not start."""


class BufferUnavailable(RunnerError):
    """Redis cannot be reached or refused a write; the batch was not stored."""

    retriable = True


class BufferFull(RunnerError):
    """The buffer is above its high-water mark; the SDK should retry later."""

    retriable = True


class ProtocolError(RunnerError):
    """A client broke PROTOCOL §1; carries the WebSocket close code to send."""

    def __init__(self, close_code: int, reason: str) -> None:
        super().__init__(reason)
        self.close_code = close_code
        self.reason = reason
