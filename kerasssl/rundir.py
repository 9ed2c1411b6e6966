"""The run directory: every file a run writes, how it is written, and the run's record.

One run of ``kerasssl pretrain`` / ``finetune`` / ``fit`` / ``evaluate`` lives in one
folder, ``RUN/``. This module is the only place that knows its file names; the
stages ask a :class:`RunDir` for paths and for atomic reads and writes, so a
reader never meets a half-written file. A stage checks everything first and
writes only once the command is accepted: its ``on_accepted(run_dir)`` hook runs
just before the first write, and the CLI records the command there
(:meth:`RunDir.record_invocation`, see :func:`recorder`), so a rejected command
writes nothing::

    RUN/config.yaml        the resolved RunConfig (replay with --config)
    RUN/runs.jsonl         one line per accepted command: what it read and wrote,
                           its config, argv, time, versions
    RUN/split.json         file names per split (kerasssl.data.split)
    RUN/preprocess.json    the in-model repair + normalisation (Preprocess settings)
    RUN/history.json       pretraining curves
    RUN/checkpoints/       resumable pretraining checkpoints
    RUN/tensorboard/       the same curves for TensorBoard
    RUN/encoder.keras      the pretrained backbone
    RUN/classifier.keras   the fine-tuned classifier
    RUN/finetune.json      the fine-tuning record, one entry per classifier file
    RUN/report.json        evaluation report
    RUN/roc.png            ROC plot
    RUN/saved_models/      `fit`'s export (TF Serving layout)

A leaf module: it imports nothing of kerasssl but :mod:`kerasssl.errors`, so
every other module may ask it (the config's YAML is written through
:func:`write_text_atomic` too).

Example:
    >>> run = RunDir("runs/a")
    >>> run.write_json(run.history, {"loss": [1.0]})
    >>> run.read_json(run.history, "pretraining history")["loss"]
    [1.0]
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path

from kerasssl.errors import KerassslError

CONFIG = "config.yaml"
RECORD = "runs.jsonl"
SPLIT = "split.json"
PREPROCESS = "preprocess.json"
HISTORY = "history.json"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
ENCODER = "encoder.keras"
CLASSIFIER = "classifier.keras"
FINETUNE = "finetune.json"
REPORT = "report.json"
ROC_PLOT = "roc.png"
COMPLETENESS_PLOT = "completeness.png"
SAVED_MODELS = "saved_models"
POOLS = "pools.json"
SKIPPED_FILES = "skipped_files.txt"

# Any of these makes a folder a run directory (export reads a run's records through them).
MARKERS = (CONFIG, SPLIT, RECORD, PREPROCESS)
# What each command writes into RUN/ (the run's record lists it; --output / --report may move some).
# Conditional files (pools.json with --unlabeled, completeness.png with a metadata.csv) are not listed.
WRITES = {
    "pretrain": (CONFIG, SPLIT, PREPROCESS, CHECKPOINTS, HISTORY, TENSORBOARD, ENCODER),
    "finetune": (CONFIG, SPLIT, PREPROCESS, CLASSIFIER, FINETUNE),
    "evaluate": (REPORT, ROC_PLOT),
    "fit": (CONFIG, SPLIT, PREPROCESS, CHECKPOINTS, HISTORY, TENSORBOARD, ENCODER, CLASSIFIER, FINETUNE,
            REPORT, ROC_PLOT, SAVED_MODELS),
}
# Where a run recorded its class names, most specific first.
_CLASS_NAME_SOURCES = (FINETUNE, REPORT, SPLIT)


class RunDir:
    """One run's folder.

    Args:
        path: the run directory (need not exist yet: nothing is created until
            something is written). A ``RunDir`` is accepted too.

    Example:
        >>> run = RunDir("runs/a")
        >>> run.encoder
        PosixPath('runs/a/encoder.keras')
    """

    def __init__(self, path):
        self.path = Path(path)

    def __repr__(self):
        return f"RunDir({str(self.path)!r})"

    def __str__(self):
        return str(self.path)

    def __fspath__(self):
        return str(self.path)

    def __eq__(self, other):
        return isinstance(other, RunDir) and other.path == self.path

    def __hash__(self):
        return hash(self.path)

    # -- paths ---------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def record(self) -> Path:
        return self.path / RECORD

    @property
    def split(self) -> Path:
        return self.path / SPLIT

    @property
    def preprocess(self) -> Path:
        return self.path / PREPROCESS

    @property
    def history(self) -> Path:
        return self.path / HISTORY

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD

    @property
    def encoder(self) -> Path:
        return self.path / ENCODER

    @property
    def classifier(self) -> Path:
        return self.path / CLASSIFIER

    @property
    def finetune_record(self) -> Path:
        return self.path / FINETUNE

    @property
    def report(self) -> Path:
        return self.path / REPORT

    @property
    def roc_plot(self) -> Path:
        return self.path / ROC_PLOT

    @property
    def completeness_plot(self) -> Path:
        return self.path / COMPLETENESS_PLOT

    @property
    def saved_models(self) -> Path:
        return self.path / SAVED_MODELS

    @property
    def pools(self) -> Path:
        """The unlabeled pools pretraining streamed (kerasssl.poolplan)."""
        return self.path / POOLS

    @property
    def skipped_files(self) -> Path:
        """Pool files ``--skip-bad`` left out, one per line."""
        return self.path / SKIPPED_FILES

    # -- state ---------------------------------------------------------------
    def is_run(self) -> bool:
        """Whether the folder already holds a run's records."""
        return any((self.path / name).exists() for name in MARKERS)

    def has_checkpoints(self) -> bool:
        """Whether ``checkpoints/`` holds anything (readable or not)."""
        return self.checkpoints.is_dir() and any(self.checkpoints.iterdir())

    @classmethod
    def of_file(cls, path):
        """The run directory a file (e.g. ``RUN/classifier.keras``) was saved in, or None."""
        if path is None:
            return None
        run = cls(Path(path).resolve().parent)
        return run if run.is_run() else None

    # -- reading and writing ---------------------------------------------------
    def read_json(self, path, what, *, missing_ok=False, broken_ok=False):
        """A JSON file of the run (a path, or a file name inside the run); see :func:`read_json`."""
        return read_json(self._file(path), what, missing_ok=missing_ok, broken_ok=broken_ok)

    def write_json(self, path, obj) -> Path:
        """Write a JSON file of the run atomically (a path, or a file name inside the run)."""
        return write_json_atomic(self._file(path), obj)

    def _file(self, path) -> Path:
        # A bare name lives in the run; a path (e.g. ``run.split``) is used as given. Joining
        # the path again would double a relative run: "run" / "run/split.json".
        path = Path(path)
        return self.path / path if path.parent == Path(".") else path

    def save_config(self, cfg) -> Path:
        """Write ``RUN/config.yaml`` (a :class:`kerasssl.config.RunConfig`), atomically."""
        cfg.save(self.config)
        return self.config

    def finetune_records(self) -> dict:
        """``{classifier file name: record}`` from ``RUN/finetune.json`` (empty if none)."""
        raw = self.read_json(self.finetune_record, "fine-tuning record", missing_ok=True)
        models = raw.get("models") if isinstance(raw, dict) else None
        return models if isinstance(models, dict) else {}

    def add_finetune_record(self, record) -> Path:
        """Add ``record`` to ``RUN/finetune.json`` under its classifier's file name (``record["model"]``).

        One entry per classifier file, so a run can hold e.g. a supervised
        baseline beside the SSL classifier; ``"latest"`` names the last one
        written. An unreadable record file is replaced (the new record wins).
        """
        raw = self.read_json(self.finetune_record, "fine-tuning record", missing_ok=True, broken_ok=True)
        records = raw.get("models") if isinstance(raw, dict) else None
        records = dict(records) if isinstance(records, dict) else {}
        name = Path(record["model"]).name
        records[name] = record
        return self.write_json(self.finetune_record, {"latest": name, "models": records})

    def class_names(self):
        """The class names the run recorded (latest fine-tuning, report or split), or None."""
        for name in _CLASS_NAME_SOURCES:
            raw = self.read_json(name, name, missing_ok=True, broken_ok=True)
            if not isinstance(raw, dict):
                continue
            names = raw.get("class_names")
            if not names and name == FINETUNE and isinstance(raw.get("models"), dict):
                latest = raw["models"].get(raw.get("latest"))
                names = latest.get("class_names") if isinstance(latest, dict) else None
            if names:
                return [str(n) for n in names]
        return None

    # -- the run's record --------------------------------------------------------
    def record_invocation(self, argv=None, *, command=None, reads=None, writes=None, config=None) -> dict:
        """Append one accepted command to ``RUN/runs.jsonl``: what it read and wrote, with which config.

        Call it once the command is accepted (a stage's ``on_accepted`` hook):
        a rejected command writes nothing.

        Args:
            argv: the command line (default ``sys.argv``).
            command: the sub-command's name, e.g. "pretrain".
            reads: ``{what: path}`` the command reads (data, model, config file).
            writes: the paths it writes (files or folders).
            config: the resolved :class:`kerasssl.config.RunConfig` it runs with.

        Returns:
            The entry written.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "argv": list(sys.argv if argv is None else argv),
            "versions": versions(),
        }
        if command is not None:
            entry["command"] = command
        if reads:
            entry["reads"] = {k: str(v) for k, v in reads.items() if v is not None}
        if writes:
            entry["writes"] = [str(p) for p in writes if p is not None]
        if config is not None:
            entry["config"] = config.to_dict()
        line = json.dumps(entry, default=_json_default) + "\n"
        with open(self.record, "ab+") as f:
            f.seek(0, os.SEEK_END)
            if f.tell():
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a line cut by a kill: keep this one whole, on its own line
                    line = "\n" + line
            f.write(line.encode())
        return entry

    def invocations(self) -> list:
        """The recorded commands, oldest first ([] for none)."""
        try:
            text = self.record.read_text()
        except OSError:
            return []
        out = []
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill: the others still count
            if isinstance(entry, dict):
                out.append(entry)
        return out

    def run_id(self) -> str:
        """A stable id of the run: folder name + time of its first recorded command."""
        first = self.invocations()[:1]
        started = first[0].get("time") if first else None
        return f"{self.path.name}@{started}" if started else self.path.name


def recorder(command, *, reads=None, moved=None, without=(), config=None, argv=None):
    """An ``on_accepted(run_dir)`` hook that records the command in that run (what the CLI passes).

    The command's files are its :data:`WRITES` inside the run directory.

    Args:
        command: the command's name ("pretrain", "finetune", "evaluate", "fit").
        reads / config / argv: as for :meth:`RunDir.record_invocation`.
        moved: ``{file name: path}`` for files the command writes elsewhere
            (``--output``, ``--report``, ``--plot``, ``export.base_dir``).
        without: file names it does not write this time (e.g. no export).

    Example:
        >>> pretrain(cfg, "data/3b", "runs/a", on_accepted=recorder("pretrain", config=cfg))
    """
    moved = {name: path for name, path in (moved or {}).items() if path is not None}

    def record(run_dir):
        # The run directory is known only now (a multiworker worker writes a private copy).
        run = RunDir(run_dir)
        writes = [moved.get(name, run.path / name) for name in WRITES.get(command, ()) if name not in without]
        run.record_invocation(argv, command=command, reads=reads, writes=writes, config=config)

    return record


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


# -- atomic files --------------------------------------------------------------------
def tmp_path_for(path) -> Path:
    """The temporary name a file is written under before it replaces ``path``.

    The suffix is kept (``a.keras`` -> ``a.tmp.keras``): Keras and matplotlib
    pick the format from it.
    """
    path = Path(path)
    return path.with_name(f"{path.stem}.tmp{path.suffix}")


@contextlib.contextmanager
def replacing(path):
    """Write to a temporary file beside ``path``, which replaces ``path`` when the block succeeds.

    A reader sees the old file or the new one, never half of one; when the
    block fails the temporary file is removed and ``path`` is left as it was.
    The parent folder is created.

    Example:
        >>> with replacing("RUN/roc.png") as tmp:
        ...     fig.savefig(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_text_atomic(path, text) -> Path:
    """Write text so a reader never sees a half-written file."""
    with replacing(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path, obj) -> Path:
    """Write JSON (NumPy scalars and arrays, paths allowed) so a reader never sees a half-written file."""
    return write_text_atomic(path, json.dumps(obj, indent=2, default=_json_default))


def save_keras_atomic(model, path, finish=None) -> Path:
    """``model.save`` to a temporary name, then rename: never a half-written ``.keras``.

    Args:
        model: the Keras model.
        path: the ``.keras`` file.
        finish: optional ``fn(tmp_path)`` run on the saved temporary file before
            it replaces ``path`` (e.g. to add the training fingerprints).
    """
    with replacing(path) as tmp:
        model.save(tmp)
        if finish is not None:
            finish(tmp)
    return Path(path)


def read_json(path, what, *, missing_ok=False, broken_ok=False):
    """Read a JSON file; a missing or broken file is the user's one-line error.

    Args:
        path: the file.
        what: how the message names it, e.g. "split file".
        missing_ok: return None for a missing file instead of raising.
        broken_ok: return None for an unreadable or invalid file instead of
            raising (for records with a fallback, e.g. checkpoints).
    """
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        if missing_ok:
            return None
        raise KerassslError(f"{path}: {what} not found") from None
    except (OSError, ValueError) as e:
        if broken_ok:
            return None
        if isinstance(e, OSError):
            raise KerassslError(f"{path}: cannot read the {what} ({e.strerror or type(e).__name__})") from None
        raise KerassslError(f"{path}: not valid JSON ({e})") from None


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
