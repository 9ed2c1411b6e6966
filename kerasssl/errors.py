"""Errors that are the user's to fix.

The CLI turns any :class:`KerassslError` into one line on stderr and exit
code 2 (no traceback). Library code raises them for bad input and lets
programming errors propagate as ordinary exceptions.
"""

import re


class KerassslError(Exception):
    """A problem with the user's input or arguments, stated in one line."""


class DataError(KerassslError):
    """A data file or folder cannot be used: the message names the file."""

    def __init__(self, path, problem):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def first_line(error) -> str:
    """The first line of an exception's message, for a one-line error of our own.

    TensorFlow's messages carry ``{{function_node ...}}`` prefixes and
    ``[Op:...]`` suffixes: both are dropped. At most 200 characters; the
    exception's type name when it has no message.

    Example:
        >>> first_line(ValueError("bad header\\n  at offset 8"))
        'bad header'
    """
    message = getattr(error, "message", None) or str(error)
    message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", message)
    message = re.sub(r"\s*\[Op:[^\]]*\].*", "", message, flags=re.S)
    message = message.strip().splitlines()[0][:200] if message.strip() else ""
    return message or type(error).__name__
