"""Errors the user fixes, as opposed to bugs.

A `UserError` is deterministic (a missing input, a bad option or parameter, a failed data gate): running again
changes nothing, so flows never retry it, and the CLI prints its message, one line that names the thing and the fix,
without a traceback. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A deterministic error whose message says what is wrong and how to fix it."""


class MissingInput(UserError, FileNotFoundError):
    """A file or directory a stage reads does not exist (and could not be fetched)."""
