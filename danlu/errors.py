"""The danlu error family.

Every error a user can cause is a :class:`DanluError`. Each subclass also subclasses the built-in
exception it refines (``ValueError``, ``KeyError``, ...) so plain ``except ValueError`` code keeps
working. The message is written for the user: what was wrong, where, and what to do. The CLI prints
it without a traceback (``--debug`` shows one).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AccessDeniedError",
    "ConfigError",
    "DanluError",
    "DataCheckError",
    "DataError",
    "MissingExtraError",
    "NotFittedError",
    "NotFoundError",
    "Preempted",
    "StoreError",
]


class DanluError(Exception):
    """Base class of every error danlu raises on purpose.

    Attributes:
        exit_code: the process exit status the CLI uses for this error.
    """

    exit_code = 1

    def __str__(self) -> str:  # KeyError quotes its message; we never want that.
        return str(self.args[0]) if self.args else self.__class__.__name__


class ConfigError(DanluError, ValueError):
    """A recipe or a command-line override is invalid."""

    exit_code = 2


class DataError(DanluError, ValueError):
    """The data cannot be used as asked (missing file, column, class, ...)."""

    exit_code = 3


class DataCheckError(DataError):
    """The data fails the recipe's ``data.checks``; the message lists every violation.

    Attributes:
        violations: the failed expectations (``danlu.data.Violation`` objects).
    """

    def __init__(self, message: str, violations: Sequence[object] = ()) -> None:
        super().__init__(message)
        self.violations = list(violations)


class NotFoundError(DanluError, KeyError):
    """A named thing (dataset, model type, run, ...) does not exist."""

    exit_code = 4


class StoreError(DanluError, OSError):
    """The run store cannot be read or written."""

    exit_code = 5


class AccessDeniedError(DanluError, PermissionError):
    """Who is acting may not do this: no valid identity (``status`` 401) or a role too low for
    the project (403). The message names the action, the project and how to get access."""

    exit_code = 7

    def __init__(self, message: str, *, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


class Preempted(DanluError):
    """The process was asked to give its slot back (SIGTERM) and stopped: training stopped
    after a batch, with a checkpoint, and the run is kept as ``interrupted``; ``danlu run
    RECIPE --resume RUN_ID`` continues it exactly where it stopped.

    Exit status 75 (``EX_TEMPFAIL``: try again later), which tells a scheduler to queue the job
    again rather than count a failure.
    """

    exit_code = 75


class NotFittedError(DanluError, AttributeError):
    """An estimator-style object was used before ``fit``."""


class MissingExtraError(DanluError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    exit_code = 6

    @classmethod
    def for_package(cls, package: str, extra: str) -> MissingExtraError:
        return cls(
            f"This feature needs the optional package '{package}', which is not installed. "
            f"Install it with: pip install 'danlu[{extra}]'"
        )
