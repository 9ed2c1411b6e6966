"""Named registries: one home for "which methods / encoders are there".

A registry maps a name to a class or builder. Entries register themselves
where they are defined (a decorator), so adding one touches one file, and the
CLI's choices and help come from :meth:`Registry.names`. Names are
case-insensitive and ``-`` equals ``_`` (``Barlow-Twins`` is ``barlow_twins``).

No Keras here: the CLI reads a registry's names only when a sub-command needs
them (:class:`kerasssl.cli.options.RegistryChoice`).

Example:
    >>> SHAPES = Registry("shape")
    >>> @SHAPES.register("square")
    ... class Square: ...
    >>> SHAPES.names(), SHAPES.get("Square") is Square
    (['square'], True)
"""

from __future__ import annotations

from typing import Callable, Iterator

from kerasssl.errors import KerassslError


def normalize_name(name) -> str:
    """The registry key of a name: lower case, ``-`` as ``_``."""
    return str(name).strip().lower().replace("-", "_")


class Registry:
    """Name -> object, filled by :meth:`register`, read by :meth:`get` and :meth:`names`.

    Args:
        kind: what the entries are ("method", "encoder"), for error messages.

    Example:
        >>> ENCODERS = Registry("encoder")
        >>> ENCODERS.register("tiny")(build_tiny)
        >>> ENCODERS.get("TINY") is build_tiny
        True
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries = {}

    def register(self, name: str) -> Callable:
        """Decorator: register the decorated object as ``name``; returns it unchanged.

        Raises:
            KerassslError: another object already holds the name (two modules
                claiming one name is a bug to see, not to hide).
        """
        key = normalize_name(name)

        def decorate(obj):
            held = self._entries.get(key)
            if held is not None and _qualname(held) != _qualname(obj):
                raise KerassslError(f"{self.kind} {key!r} is already registered by {_qualname(held)}; "
                                    f"{_qualname(obj)} needs another name")
            self._entries[key] = obj  # the same definition re-run (a reloaded module) replaces itself
            return obj

        return decorate

    def get(self, name):
        """The object registered as ``name``; one-line KerassslError listing the names if none."""
        key = normalize_name(name)
        if key not in self._entries:
            raise KerassslError(f"unknown {self.kind} {name!r}; choose from {', '.join(self.names())}")
        return self._entries[key]

    def names(self) -> list:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name) -> bool:
        return normalize_name(name) in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


def _qualname(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
