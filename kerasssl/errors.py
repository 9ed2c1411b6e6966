"""Errors that are the user's to fix.

The CLI turns any :class:`KerassslError` into one line on stderr and exit
code 2 (no traceback). Library code raises them for bad input and lets
programming errors propagate as ordinary exceptions.
"""


class KerassslError(Exception):
    """A problem with the user's input or arguments, stated in one line."""


class DataError(KerassslError):
    """A data file or folder cannot be used: the message names the file."""

    def __init__(self, path, problem):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
