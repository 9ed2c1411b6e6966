"""Keep native libraries' log lines off the CLI's stderr (unless ``-v``).

TensorFlow, LiteRT and CUDA write to file descriptor 2 from C++: at import,
before absl logging is initialised (so ``TF_CPP_MIN_LOG_LEVEL`` cannot stop
them: "All log messages before absl::InitializeLog()", oneDNN, cudart_stub), and
later where no environment variable reaches (LiteRT's "Created TensorFlow Lite
XNNPACK delegate"). A user of the CLI wants kerasssl's own lines: errors,
warnings, progress.

:class:`NativeStderrHidden` points fd 2 at /dev/null and rebinds
``sys.stderr`` to a duplicate of the original descriptor, so everything Python
writes (click's messages, ``logging``, ``warnings``, a traceback) still shows
and only what native code writes to fd 2 is dropped.

Example:
    >>> with NativeStderrHidden():
    ...     import tensorflow as tf        # no start-up chatter
    ...     print("kept", file=sys.stderr)  # shown
"""

from __future__ import annotations

import os
import sys


class NativeStderrHidden:
    """Context manager: fd 2 -> /dev/null, ``sys.stderr`` -> the original stderr.

    Does nothing when ``sys.stderr`` is not the process's fd 2 (e.g. captured
    by pytest) or there is no fd 2. On exit fd 2 is restored; the duplicate
    stays open so a logging handler made inside the block keeps writing to the
    real stderr.
    """

    def __init__(self):
        self._original = None
        self._saved_fd = None

    def __enter__(self):
        stream = sys.stderr
        try:
            if stream is None or stream.fileno() != 2:
                return self
            stream.flush()
            saved = os.dup(2)
        except (AttributeError, ValueError, OSError):
            return self
        try:
            null = os.open(os.devnull, os.O_WRONLY)
        except OSError:
            os.close(saved)
            return self
        replacement = open(saved, "w", buffering=1, encoding=stream.encoding, errors=stream.errors)
        os.dup2(null, 2)
        os.close(null)
        self._original, self._saved_fd = stream, saved
        sys.stderr = replacement
        return self

    def __exit__(self, *exc):
        if self._original is None:
            return False
        try:
            sys.stderr.flush()
        except (ValueError, OSError):
            pass
        os.dup2(self._saved_fd, 2)
        sys.stderr = self._original
        self._original = None
        return False


def verbosity(argv) -> int:
    """How many -v / --verbose the group options (those before the sub-command) hold.

    Read from argv before click parses it: native libraries may be imported
    while click resolves the sub-command, before the group's callback runs.
    """
    count = 0
    for arg in argv:
        if arg == "--verbose":
            count += 1
        elif arg.startswith("-") and not arg.startswith("--") and set(arg[1:]) == {"v"}:
            count += len(arg) - 1
        elif not arg.startswith("-"):
            break  # the sub-command: its own options are its own
    return count
