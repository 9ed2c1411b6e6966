"""Resumable training checkpoints: at each epoch's end and, for long epochs, every N steps.

A checkpoint is one ``.npz`` of every array a resume needs (all model
variables, including BatchNorm statistics, momentum encoders, MoCo's queue,
DINO's centre and the augmentation layers' seed-generator states; all
optimizer variables, including the iteration count and loss scale; mid-epoch
also the metrics' running sums) and a JSON record beside it. Both are written
through a temporary file and ``os.replace``, so a kill at any moment leaves
the previous complete checkpoint; the newest two are kept, so
:func:`load_checkpoint` can fall back when the newest is truncated.

File names (inside ``RUN/checkpoints``, which :mod:`kerasssl.rundir` names):
``ckpt-EEEE.npz`` after epoch EEEE, ``ckpt-EEEE-SSSSSSS.npz`` after step
SSSSSSS of epoch EEEE + 1 (``--checkpoint-every``), each with its
``.json`` record, and ``latest.json`` (a copy of the newest record). A record
holds ``epoch`` (epochs completed), ``step`` (steps of the next epoch already
trained, 0 at an epoch's end), ``steps_per_epoch``, ``history`` (the
completed epochs) and, mid-epoch, ``epoch_step_loss`` (the per-step losses so
far in the epoch) and ``data`` (the position in the input stream, see
:func:`kerasssl.data.pipeline.epoch_batches`).

Example:
    >>> ckpt = EpochCheckpoint(run / "checkpoints", history={}, every_steps=500, steps_per_epoch=10_000)
    >>> model.fit(ds, epochs=3, steps_per_epoch=10_000, callbacks=[ckpt])
    >>> state = load_checkpoint(run / "checkpoints")           # on resume
    >>> meta = restore_checkpoint(model, run / "checkpoints", checkpoint=state)
    >>> ckpt.resume_from(state)                                 # the epoch's metrics and step losses
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Optional

import keras
import numpy as np

from kerasssl.errors import KerassslError
from kerasssl.rundir import read_json, write_text_atomic

log = logging.getLogger(__name__)

#: The per-step loss a method reports (``kerasssl.methods.base``); recorded per step, not per epoch.
STEP_LOSS = "step_loss"


def _values(variables):
    # The variable, not its .value: under tf.distribute a metric's running sum is a
    # SyncOnReadVariable, which only the Keras variable reads as the replicas' sum.
    return [keras.ops.convert_to_numpy(v) for v in variables]


class EpochCheckpoint(keras.callbacks.Callback):
    """Atomic checkpoint of everything a resume needs, after each good epoch and every ``every_steps`` steps.

    An epoch whose loss is not finite, or a step after which training was
    stopped (the NaN guard), is not saved. The history gets one entry per
    epoch for every logged key; ``step_loss`` (a method's per-step loss) gets
    the list of the epoch's per-step values instead of its last one.

    A resumed epoch runs as its own ``fit`` call for the steps left
    (:meth:`resume_from` tells the callback where it starts): at its begin the
    metrics' running sums and the step losses of the checkpoint come back, so
    the epoch's logged mean is the uninterrupted run's.

    Args:
        directory: the checkpoint folder (``RUN/checkpoints``).
        history: the per-epoch history so far (dict of lists), extended in place.
        on_saved: optional ``fn(epoch, history)`` called after each epoch's save
            (pretrain writes ``RUN/history.json`` there).
        keep: number of checkpoints kept (epoch and mid-epoch ones together).
        every_steps: also save after every this many steps within an epoch (0: epochs only).
        steps_per_epoch: the epoch's length (recorded; no mid-epoch save at its last step,
            the epoch's own save follows).
        data_position: optional ``fn(epoch, step) -> dict`` describing the input stream's
            position (recorded in the record's ``data``).

    Example:
        >>> ckpt = EpochCheckpoint(run / "checkpoints", history={}, every_steps=100, steps_per_epoch=1000)
        >>> model.fit(ds, epochs=10, steps_per_epoch=1000, callbacks=[ckpt])
    """

    def __init__(self, directory, history=None, on_saved=None, keep=2, every_steps=0, steps_per_epoch=None,
                 data_position: Optional[Callable[[int, int], dict]] = None):
        super().__init__()
        self.directory = Path(directory)
        self.history = history if history is not None else {}
        self.on_saved = on_saved
        self.keep = keep
        self.every_steps = int(every_steps or 0)
        self.steps_per_epoch = None if steps_per_epoch is None else int(steps_per_epoch)
        self.data_position = data_position
        #: steps of the current epoch trained before this fit call (a resumed epoch), else 0.
        self.step_offset = 0
        self._epoch = 0
        self._step_losses = []
        self._resume = None

    def resume_from(self, checkpoint) -> int:
        """Prepare to continue the epoch a mid-epoch checkpoint stopped in; returns its step (0: none)."""
        progress = epoch_progress(checkpoint)
        if progress is None:
            return 0
        self._resume = progress
        self.step_offset = progress["step"]
        return self.step_offset

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._step_losses = []
        if self._resume is not None:  # after Keras reset the metrics for this epoch
            variables = self.model.metrics_variables
            if len(variables) != len(self._resume["metrics"]):
                raise KerassslError(f"{self.directory}: the checkpoint has {len(self._resume['metrics'])} metric "
                                    f"variables, the model {len(variables)}; was the run's config changed?")
            for var, value in zip(variables, self._resume["metrics"]):
                var.assign(value)
            self._step_losses = list(self._resume["step_loss"])
            self._resume = None

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        if STEP_LOSS in logs:
            self._step_losses.append(float(np.asarray(logs[STEP_LOSS])))
        step = self.step_offset + batch + 1
        if not self.every_steps or step % self.every_steps or self.model.stop_training:
            return
        if self.steps_per_epoch is not None and step >= self.steps_per_epoch:
            return  # the epoch's own checkpoint follows
        if not math.isfinite(float(np.asarray(logs.get("loss", 0.0)))):
            return
        self._save(self._epoch, step)

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        self.step_offset = 0
        if not math.isfinite(float(logs.get("loss", float("nan")))) or self.model.stop_training:
            return
        for key, value in logs.items():
            entry = list(self._step_losses) if key == STEP_LOSS else float(np.asarray(value))
            self.history.setdefault(key, []).append(entry)
        self._save(epoch + 1, 0)
        if self.on_saved is not None:
            self.on_saved(epoch + 1, self.history)

    def _save(self, epoch, step):
        """Write checkpoint (``epoch`` completed, ``step`` steps into the next), then prune old ones."""
        if hasattr(self.model, "jax_state_sync"):  # JAX keeps the state outside the variables mid-epoch
            self.model.jax_state_sync()
        self.directory.mkdir(parents=True, exist_ok=True)
        name = checkpoint_name(epoch, step)
        groups = [("model", self.model.variables), ("optimizer", self.model.optimizer.variables)]
        if step:
            groups.append(("metrics", self.model.metrics_variables))
        arrays = {f"{prefix}_{i:05d}": value for prefix, variables in groups
                  for i, value in enumerate(_values(variables))}
        tmp = self.directory / (name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.directory / name)
        meta = {"epoch": epoch, "step": step, "steps_per_epoch": self.steps_per_epoch, "file": name,
                "history": self.history, "n_model_variables": len(self.model.variables),
                "n_optimizer_variables": len(self.model.optimizer.variables)}
        if step:
            meta["epoch_step_loss"] = list(self._step_losses)
        if self.data_position is not None:
            meta["data"] = self.data_position(epoch, step)
        write_text_atomic(self.directory / _record_name(name), json.dumps(meta))
        write_text_atomic(self.directory / LATEST, json.dumps(meta))
        for old in checkpoint_files(self.directory)[self.keep:]:
            old.unlink(missing_ok=True)
            (self.directory / _record_name(old.name)).unlink(missing_ok=True)


def epoch_progress(checkpoint):
    """What a mid-epoch checkpoint holds of its unfinished epoch, or None for an epoch-end one.

    Returns:
        ``{"step", "metrics" (the metric variables' arrays), "step_loss" (list)}``.
    """
    if checkpoint is None:
        return None
    meta = checkpoint["meta"]
    step = int(meta.get("step") or 0)
    if not step:
        return None
    arrays = checkpoint["arrays"]
    return {"step": step, "metrics": [arrays[k] for k in sorted(k for k in arrays if k.startswith("metrics_"))],
            "step_loss": [float(v) for v in meta.get("epoch_step_loss", [])]}


LATEST = "latest.json"
_NAME = re.compile(r"ckpt-(\d+)(?:-(\d+))?\.npz")


def checkpoint_name(epoch: int, step: int = 0) -> str:
    """``ckpt-EEEE.npz`` after an epoch, ``ckpt-EEEE-SSSSSSS.npz`` after a step of the next one."""
    return f"ckpt-{epoch:04d}.npz" if not step else f"ckpt-{epoch:04d}-{step:07d}.npz"


def _record_name(checkpoint_name: str) -> str:
    return checkpoint_name[: -len(".npz")] + ".json"


def checkpoint_files(directory) -> list:
    """The checkpoint files of a folder, newest (highest epoch, then step) first."""
    def position(path):
        match = _NAME.fullmatch(path.name)
        return (int(match.group(1)), int(match.group(2) or 0)) if match else (-1, -1)

    return sorted(Path(directory).glob("ckpt-*.npz"), key=position, reverse=True)


def _read_record(path):
    """A checkpoint record (JSON dict with an int "epoch"), or None if missing or unreadable."""
    record = read_json(path, "checkpoint record", missing_ok=True, broken_ok=True)
    if not isinstance(record, dict) or not isinstance(record.get("epoch"), int) \
            or not isinstance(record.get("history", {}), dict):
        return None
    return record


def _record_of(directory, checkpoint):
    """The record of one checkpoint file: its ``ckpt-EEEE.json``, else ``latest.json``
    when that names it (runs from before per-checkpoint records)."""
    record = _read_record(Path(directory) / _record_name(checkpoint.name))
    if record is None:
        latest = _read_record(Path(directory) / LATEST)
        if latest is not None and latest.get("file") == checkpoint.name:
            record = latest
    return record


def has_checkpoint(directory) -> bool:
    """True when a checkpoint folder holds any checkpoint or record, readable or not."""
    directory = Path(directory)
    return (directory / LATEST).exists() or bool(checkpoint_files(directory))


def load_checkpoint_meta(directory):
    """The record of the newest checkpoint (reads no arrays), or None if there is none.

    ``latest.json`` when readable, else the newest ``ckpt-EEEE.json``.

    Example:
        >>> load_checkpoint_meta(run / "checkpoints")["epoch"]
        4
    """
    directory = Path(directory)
    latest = _read_record(directory / LATEST)
    if latest is not None:
        return latest
    for checkpoint in checkpoint_files(directory):
        record = _read_record(directory / _record_name(checkpoint.name))
        if record is not None:
            return record
    return None


def _read_arrays(path) -> dict:
    """Every array of a ``.npz`` checkpoint, read in full (so a bad CRC shows now)."""
    with np.load(path, allow_pickle=False) as data:
        return {key: np.asarray(data[key]) for key in data.files}


def _why_unreadable(error) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def load_checkpoint(directory):
    """The newest checkpoint that reads completely: ``{"meta", "arrays", "path"}``.

    A truncated or corrupt newest checkpoint (e.g. the disk filled up, or a
    copy was cut short) is skipped with ONE logged warning naming it and the
    checkpoint used instead; the previous one is kept for exactly this.

    Returns:
        None when the folder holds no checkpoint at all.

    Raises:
        KerassslError: checkpoints exist but none is usable (one line).

    Example:
        >>> state = load_checkpoint(run / "checkpoints"); state["meta"]["epoch"]
        3
    """
    directory = Path(directory)
    if not has_checkpoint(directory):
        return None
    problems = []
    for path in checkpoint_files(directory):
        record = _record_of(directory, path)
        if record is None:
            problems.append(f"{path.name} has no readable record ({_record_name(path.name)})")
            continue
        try:
            arrays = _read_arrays(path)
        except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError, KeyError) as e:
            problems.append(f"{path.name} is truncated or corrupt ({_why_unreadable(e)})")
            continue
        if problems:
            step = f", step {record['step']}" if record.get("step") else ""
            log.warning("%s: %s; resuming from %s (epoch %d%s)", directory, "; ".join(problems), path.name,
                        record["epoch"], step)
        return {"meta": record, "arrays": arrays, "path": path}
    found = "; ".join(problems) or "no ckpt-*.npz file beside latest.json"
    raise KerassslError(f"{directory}: no usable checkpoint ({found}); start again in a new --run-dir")


def restore_checkpoint(model, directory, checkpoint=None):
    """Load a checkpoint into a compiled, built ``model``; returns its record.

    Every array is checked against the model before any is assigned, so a
    mismatch leaves the model as it was. The optimizer is built first so its
    variables exist to receive the state.

    Args:
        model: the compiled method model.
        directory: the checkpoint folder.
        checkpoint: what :func:`load_checkpoint` returned (default: load the newest usable one).

    Raises:
        KerassslError: no usable checkpoint, or it does not match the model.

    Example:
        >>> meta = restore_checkpoint(model, run / "checkpoints"); meta["epoch"]
        3
    """
    directory = Path(directory)
    if checkpoint is None:
        checkpoint = load_checkpoint(directory)
    if checkpoint is None:
        raise KerassslError(f"{directory}: no checkpoint to resume from")
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    path, data = checkpoint["path"], checkpoint["arrays"]
    pairs = []
    groups = (("model", model.variables), ("optimizer", model.optimizer.variables))
    for prefix, variables in groups:
        keys = sorted(k for k in data if k.startswith(prefix + "_"))
        if len(keys) != len(variables):
            raise KerassslError(
                f"{path}: checkpoint has {len(keys)} {prefix} variables, the model {len(variables)}; "
                "was the run's config changed?"
            )
        for key, var in zip(keys, variables):
            value = data[key]
            if tuple(value.shape) != tuple(var.shape):
                raise KerassslError(f"{path}: {prefix} variable {var.path} has shape {value.shape} in the "
                                    f"checkpoint, {tuple(var.shape)} in the model")
            pairs.append((var, value))
    for var, value in pairs:
        var.assign(value)
    return checkpoint["meta"]
