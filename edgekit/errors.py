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
