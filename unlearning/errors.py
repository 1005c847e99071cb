"""Errors a user can act on. Each message says what was wrong and what to do.

The UI shows ``str(error)`` as is; the CLI prints it on one line and exits non-zero.
Anything that is *not* an :class:`UnlearningError` is a bug and is logged with its traceback.
"""


class UnlearningError(Exception):
    """Base class of every user-facing error."""


class InputError(UnlearningError, ValueError):
    """A request, setting, model source or file was not acceptable."""


class DivergedError(UnlearningError):
    """A method produced a non-finite loss or weight; the base model is untouched."""


class CancelledError(UnlearningError):
    """The user cancelled the run."""
