"""Errors the user fixes, as opposed to bugs; and the exception a termination signal becomes.

A `UserError` is deterministic (a missing input, a bad option or parameter, a failed data gate): running again
changes nothing, so flows never retry it, and the CLI prints its message, one line that names the thing and the fix,
without a traceback. Anything else that escapes is a bug and keeps its traceback.

`Terminated` is what the CLI's SIGTERM handler raises in the main thread: a `KeyboardInterrupt`, so every `finally`,
`with` block and Ctrl-C handler on the way up (the sandbox's cleanup, MLflow's KILLED status, atomic writers removing
their temp file) runs exactly as for Ctrl-C; the CLI then prints one line and exits 128 + the signal number.
"""

from __future__ import annotations

import signal


class UserError(Exception):
    """A deterministic error whose message says what is wrong and how to fix it."""


class MissingInput(UserError, FileNotFoundError):
    """A file or directory a stage reads does not exist (and could not be fetched)."""


class Terminated(KeyboardInterrupt):
    """The process was asked to stop by a signal other than SIGINT (SIGTERM: `kill`, a scheduler, a container
    stop). A KeyboardInterrupt so that code handling Ctrl-C handles it the same; `signum` says which signal."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = int(signum)
