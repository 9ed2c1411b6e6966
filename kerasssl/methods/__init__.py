"""Self-supervised methods over one shared training step, and their registry.

Example:
    >>> from kerasssl import methods
    >>> methods.available()
    ['barlow_twins', 'byol', 'dino', 'moco', 'simclr', 'simsiam', 'vicreg']
    >>> model = methods.get("byol")(encoder, preprocess, view1, view2, base_momentum=0.99)
"""

from kerasssl.errors import KerassslError
from kerasssl.methods.barlow_twins import BarlowTwins
from kerasssl.methods.base import SSLMethod
from kerasssl.methods.byol import BYOL
from kerasssl.methods.dino import DINO
from kerasssl.methods.moco import MoCo
from kerasssl.methods.simclr import SimCLR
from kerasssl.methods.simsiam import SimSiam
from kerasssl.methods.vicreg import VICReg

_REGISTRY = {cls.method_name: cls for cls in (SimCLR, BYOL, SimSiam, BarlowTwins, VICReg, MoCo, DINO)}


def available():
    """Registered method names, sorted."""
    return sorted(_REGISTRY)


def get(name):
    """The method class registered as ``name`` (case-insensitive).

    Args:
        name: simclr, byol, simsiam, barlow_twins, vicreg, moco or dino.

    Example:
        >>> get("simclr").__name__
        'SimCLR'
    """
    key = str(name).lower().replace("-", "_")
    if key not in _REGISTRY:
        raise KerassslError(f"unknown method {name!r}; choose from {', '.join(available())}")
    return _REGISTRY[key]


__all__ = ["SSLMethod", "SimCLR", "BYOL", "SimSiam", "BarlowTwins", "VICReg", "MoCo", "DINO", "available", "get"]
