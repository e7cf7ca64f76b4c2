"""The one exception type that edgekit raises for a user's mistake.

The CLI prints it as a single line (``error: ...``) and exits with status 2; it
never shows a traceback for it. Anything else that escapes is a bug.
"""

from __future__ import annotations


class EdgekitError(Exception):
    """A problem with the user's input or environment, with a hint to fix it.

    Args:
        message: what is wrong, in one sentence.
        hint: how to fix it (optional), appended after " -- ".
    """

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message} -- {hint}")


class UnavailableError(EdgekitError):
    """A target's backend, runtime or hardware is missing on this machine."""


def at_least(option: str, value, low) -> None:
    """Refuse ``value`` below ``low`` with one error line, before any heavy work.

    Raises:
        EdgekitError: ``value < low`` (``None`` passes: the option was not given).
    """
    if value is not None and value < low:
        raise EdgekitError(f"{option} must be at least {low}, got {value}")


def at_most(option: str, value, high) -> None:
    """Refuse ``value`` above ``high`` with one error line, before any heavy work.

    Raises:
        EdgekitError: ``value > high`` (``None`` passes: the option was not given).
    """
    if value is not None and value > high:
        raise EdgekitError(f"{option} must be at most {high}, got {value}")
