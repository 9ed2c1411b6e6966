"""What a run directory records beside the config: versions and command line."""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path


def versions() -> dict:
    """Versions of the packages that decide a run's numbers."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("kerasssl", "keras", "tensorflow", "numpy", "jax", "sklearn"):
        module = sys.modules.get(name)
        if module is None:
            try:
                module = __import__(name)
            except Exception:  # noqa: BLE001 - optional packages may be absent
                continue
        out[name] = getattr(module, "__version__", "unknown")
    return out


def record_invocation(run_dir, argv=None) -> None:
    """Append the command line and versions to ``RUN/runs.jsonl``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    entry = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": list(sys.argv if argv is None else argv),
        "versions": versions(),
    }
    with open(run_dir / "runs.jsonl", "a") as f:
        f.write(json.dumps(entry) + "\n")


def write_json_atomic(path, obj) -> None:
    """Write JSON so a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default))
    tmp.replace(path)


def _json_default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path, what):
    """Read a JSON file of the run; a missing or broken file is the user's one-line error.

    Args:
        path: the file.
        what: how the message names it, e.g. "split file".
    """
    from kerasssl.errors import KerassslError

    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise KerassslError(f"{path}: {what} not found") from None
    except (OSError, ValueError) as e:
        raise KerassslError(f"{path}: not valid JSON ({e})") from None
