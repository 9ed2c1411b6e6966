"""Self-supervised methods over one shared training step, and their registry.

A method is one file in this package: its heads, loss, default views and its
registration (``@register_method("name")``, see :mod:`kerasssl.methods.base`).
Importing the package imports every sibling module (:func:`discover`), so a new
file is registered, offered by ``kerasssl pretrain --method`` and accepted in
``pretrain.method`` with no edit anywhere else.

Example:
    >>> from kerasssl import methods
    >>> methods.available()
    ['barlow_twins', 'byol', 'dino', 'moco', 'simclr', 'simsiam', 'vicreg']
    >>> model = methods.get("byol")(encoder, preprocess, view1, view2, base_momentum=0.99)
"""

import importlib
import pkgutil

from kerasssl.methods.base import METHODS, SSLMethod, register_method


def discover():
    """Import every module of this package (those not starting with ``_``) so its methods register.

    Each registered class is also made an attribute of the package
    (``kerasssl.methods.SimCLR``). Called on import; call again after adding
    a directory to ``kerasssl.methods.__path__``.

    Returns:
        The registered names, sorted.
    """
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")
    for name in METHODS.names():
        cls = METHODS.get(name)
        globals()[cls.__name__] = cls
        if cls.__name__ not in __all__:
            __all__.append(cls.__name__)
    return METHODS.names()


def available():
    """Registered method names, sorted."""
    return METHODS.names()


def get(name):
    """The method class registered as ``name`` (case-insensitive, ``-`` as ``_``).

    Args:
        name: one of :func:`available`.

    Raises:
        KerassslError: an unknown name (one line listing the known ones).

    Example:
        >>> get("simclr").__name__
        'SimCLR'
    """
    return METHODS.get(name)


__all__ = ["SSLMethod", "register_method", "available", "get", "discover"]
discover()
