"""Run code right after the import of a third-party top-level package.

kerasssl's Keras classes must be registered as soon as ``keras`` is usable, so
that ``import kerasssl`` is enough for ``keras.saving.load_model`` (see
:func:`kerasssl.register_keras_objects`), without importing Keras early:
``import kerasssl`` and ``kerasssl --help`` must not pay for Keras /
TensorFlow start-up (~4 s here).

One finder on ``sys.meta_path`` wraps the hooked package's loader: the real
loader does the import, the callbacks run after it, and the module keeps its
original loader. For a package already imported, :func:`call_after_import`
calls at once.

Example:
    >>> from kerasssl.importhooks import call_after_import
    >>> call_after_import("keras", lambda: print("keras is ready"))
"""

from __future__ import annotations

import _thread
import sys

# Only builtins and modules Python has loaded at start-up: `import kerasssl` pays
# for this module (importlib.abc alone would cost ~10 ms through importlib.resources).
_lock = _thread.RLock()
_after = {}  # top-level package name -> [(callback, not_inside)] run after its import
_importing = {}  # watched package -> how many of its modules are being imported now
_waiting = {}  # watched package -> [(package, callback)] waiting for those imports to finish


def call_after_import(name, callback, *, not_inside=None):
    """Call ``callback()`` once package ``name`` is imported (now, if it already is).

    Args:
        name: a top-level package, e.g. "keras".
        callback: called without arguments. One that raises is logged, never
            propagated: it must not break the user's ``import keras``.
        not_inside: a package (e.g. "kerasssl") whose modules the callback
            imports. When ``name`` is imported from inside the import of one of
            them (``from kerasssl.heads import X`` imports keras first), the
            callback waits until that outermost import has finished: run at
            once, it would meet that package's half-initialised modules.
    """
    with _lock:
        if name in sys.modules:
            _run(name, [callback])
            return
        _after.setdefault(name, []).append((callback, not_inside))
        if not_inside is not None:
            _importing.setdefault(not_inside, 0)
        _install()


def _run(name, callbacks):
    """Call each callback; ``name``: the package whose import they follow."""
    for callback in callbacks:
        try:
            callback()
        except Exception as e:  # noqa: BLE001 - see call_after_import
            import logging

            logging.getLogger(__name__).warning(
                "after importing %s: %s failed: %s: %s", name, getattr(callback, "__name__", callback),
                type(e).__name__, e)


def _install():
    if not any(isinstance(f, _HookFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _HookFinder())


def _uninstall_if_idle():
    if not _after and not _waiting and not any(_importing.values()):
        _importing.clear()
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _HookFinder)]


def _watched_package(fullname):
    top = fullname.partition(".")[0]
    return top if top in _importing else None


class _HookFinder:
    """A meta path finder that finds nothing itself: it hands a hooked module's
    real spec back with a wrapped loader (hooked: a package with callbacks, or a
    module of a package a callback waits for)."""

    def find_spec(self, fullname, path=None, target=None):
        with _lock:
            hooked = fullname in _after or _watched_package(fullname)
        if not hooked:
            return None
        spec = None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _HookedLoader(fullname, spec.loader)
        return spec


class _HookedLoader:
    def __init__(self, name, loader):
        self._name = name
        self._loader = loader

    def __getattr__(self, attr):  # get_resource_reader, is_package, ...: the real loader's
        return getattr(self._loader, attr)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        # The module keeps its own loader (importlib.resources and friends ask it).
        module.__loader__ = self._loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._loader
        with _lock:
            watched = _watched_package(self._name)
            if watched:
                _importing[watched] += 1
        try:
            self._loader.exec_module(module)
        except BaseException:
            self._finished(watched, imported=False)
            raise
        self._finished(watched, imported=True)

    def _finished(self, watched, imported):
        now, ready = [], []
        with _lock:
            if imported:
                for callback, not_inside in _after.pop(self._name, []):
                    if not_inside is not None and _importing.get(not_inside):
                        _waiting.setdefault(not_inside, []).append((self._name, callback))
                    else:
                        now.append(callback)
            if watched:
                _importing[watched] -= 1
                if _importing[watched] == 0:
                    ready = _waiting.pop(watched, [])
            _uninstall_if_idle()
        _run(self._name, now)
        for name, callback in ready:
            _run(name, [callback])
