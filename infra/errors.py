"""The few exception types callers can catch. Every message says what is wrong and how to fix it."""

from __future__ import annotations


class LakeloopError(Exception):
    """Base class. ``hint`` tells the user what to do about it."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} ({hint})" if hint else message)

    def __reduce__(self):  # keeps message and hint apart across processes (the ingestor's flush worker)
        return _rebuild, (type(self), self.message, self.hint)


def _rebuild(cls: type[LakeloopError], message: str, hint: str | None) -> LakeloopError:
    return cls(message, hint=hint)


class ConfigError(LakeloopError):
    """A setting or config file is wrong."""


class ServiceError(LakeloopError):
    """A local service could not be started, reached or stopped."""


class MissingDependencyError(LakeloopError):
    """Something the machine needs (Java, Maven, jars, an optional package) is missing."""


class DataError(LakeloopError):
    """A table or dataset is not what the caller expected."""


class CommitConflictError(LakeloopError):
    """A Delta commit lost a race with another writer; re-read and retry."""


class OffsetError(LakeloopError):
    """The offsets stored in the lake do not fit the topic (a gap, a recreated topic, an offset beyond its end)."""
