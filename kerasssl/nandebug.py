"""Train-step NaN debugging (``--debug-nans``, ``pretrain.debug_nans``): the first non-finite tensor.

A NaN/Inf loss says *that* a step broke, not *where*. With the debug mode on,
each train step also checks, in the order the step computes them:

1. the forward pass: the preprocessed batch (raw NaN pixels are expected:
   the Preprocess layer repairs them), the two views, every encoder layer's output (both views at once), the encoder
   features of each view, the projections/predictions, the method's outputs;
2. the loss: its terms as the loss function names them (normalised
   embeddings, logits, log-sum-exp, positives, ...) and the loss itself;
3. the gradient of every trainable variable, in the order back-propagation
   produces them (last layer first);
4. every trainable variable after the optimizer's update.

Each check is a handful of ``keras.ops`` reductions on the device (non-finite
count, min and max of the finite part), so it runs inside the jitted / traced
step on TF and JAX alike; the step returns four scalars (the index of the
first non-finite tensor, -1 if none, and its three numbers) in its logs, and
:class:`NaNDebugReport` decodes them on the host: it logs the tensor (name,
step, shape, how many non-finite, finite min/max) and stops training; the
pretraining then ends with the usual one-line hint, naming it.

Off (the default) nothing of this is traced: :func:`probe` returns its input
untouched and the method runs Keras's own ``train_step``.

Tensors are recorded by :func:`probe` calls in :mod:`kerasssl.methods.base`
and :mod:`kerasssl.losses`; a new loss can name its own terms the same way.

Not covered: under ``mixed_float16`` the gradients of the loss-scaled step
(overflow there is expected: the LossScaleOptimizer skips the step), and
distributed steps (Keras combines per-replica logs; run one device).

Example:
    >>> model.debug_nans = True          # before fit(); or `kerasssl pretrain --debug-nans`
    >>> report = NaNDebugReport()
    >>> model.fit(ds, callbacks=[report]); report.failure
    'first non-finite tensor at step 2 (epoch 1, batch 2): gradient of projector/out/kernel ...'
"""

from __future__ import annotations

import contextlib
import logging
import weakref

import keras
from keras import ops

try:  # Keras traces a layer's call symbolically to build it (compute_output_spec): not a step
    from keras.src.backend.common.symbolic_scope import in_symbolic_scope
except ImportError:  # pragma: no cover - a Keras without it: builds are not told apart
    def in_symbolic_scope():
        return False

log = logging.getLogger(__name__)

#: The debug step's log entries: index of the first non-finite tensor (-1: none), and its numbers.
LOG_KEYS = ("debug_nans_index", "debug_nans_count", "debug_nans_min", "debug_nans_max")

_RECORDERS = []  # the recordings being traced (innermost last)
_LAYER_MODELS = weakref.WeakKeyDictionary()  # encoder -> (multi-output twin, names), not tracked by Keras


class _Recording:
    def __init__(self):
        self.entries = []  # (name, tensor)

    def add(self, name, x):
        taken = {n for n, _ in self.entries}
        unique, k = name, 2
        while unique in taken:
            unique, k = f"{name}#{k}", k + 1
        self.entries.append((unique, x))


def recording_active() -> bool:
    """True while a debug train step is being traced (the probes record)."""
    return bool(_RECORDERS) and not in_symbolic_scope()


def probe(name, x):
    """Record ``x`` as ``name`` when a debug step is being traced; return ``x`` unchanged.

    Args:
        name: what the tensor is (``"nt_xent/logits"``); a repeated name gets ``#2``, ...
        x: a floating tensor.

    Example:
        >>> logits = probe("nt_xent/logits", ops.matmul(q, ops.transpose(k)) / t)
    """
    if _RECORDERS and not in_symbolic_scope():
        _RECORDERS[-1].add(name, x)
    return x


@contextlib.contextmanager
def recording():
    """Collect the :func:`probe` calls made inside the block."""
    rec = _Recording()
    _RECORDERS.append(rec)
    try:
        yield rec
    finally:
        _RECORDERS.remove(rec)


def tensor_stats(x):
    """(3,) float32: non-finite count, min and max of the finite part (+inf / -inf when none)."""
    x = ops.cast(x, "float32")
    finite = ops.isfinite(x)
    count = ops.sum(ops.cast(ops.logical_not(finite), "float32"))
    low = ops.min(ops.where(finite, x, float("inf")))
    high = ops.max(ops.where(finite, x, float("-inf")))
    return ops.stack([count, low, high])


def stack_stats(tensors):
    """(K, 3) float32 of :func:`tensor_stats` (K may be 0)."""
    rows = [tensor_stats(t) for t in tensors]
    return ops.stack(rows) if rows else ops.zeros((0, 3), "float32")


def first_nonfinite(stats):
    """The step's log entries (:data:`LOG_KEYS`) from a (K, 3) stats table, on the device."""
    bad = stats[:, 0] > 0
    any_bad = ops.any(bad)
    index = ops.argmax(ops.cast(bad, "int32"))  # the first True
    row = ops.take(stats, index, axis=0)
    return {
        LOG_KEYS[0]: ops.where(any_bad, ops.cast(index, "float32"), -1.0),
        LOG_KEYS[1]: ops.where(any_bad, row[0], 0.0),
        LOG_KEYS[2]: ops.where(any_bad, row[1], 0.0),
        LOG_KEYS[3]: ops.where(any_bad, row[2], 0.0),
    }


def encode_layers(encoder, x, training):
    """``encoder(x)`` while probing every layer's output (debug mode, functional encoders).

    The twin model shares the encoder's layers and variables (held outside
    Keras's tracking, so the method's weights are unchanged). An encoder that is
    not a plain functional graph is called as it is (features probed only).
    """
    twin = _LAYER_MODELS.get(encoder)
    if twin is None:
        twin = (None, [])
        try:
            layers = [layer for layer in encoder.layers if not isinstance(layer, keras.layers.InputLayer)]
            outputs = [layer.output for layer in layers]
            if layers and outputs[-1] is encoder.output:
                twin = (keras.Model(encoder.inputs, outputs, name=f"{encoder.name}_layers"),
                        [f"{encoder.name}/{layer.name}" for layer in layers])
        except (AttributeError, ValueError, TypeError):  # a subclassed or multi-node encoder
            pass
        _LAYER_MODELS[encoder] = twin
    model, names = twin
    if model is None:
        return encoder(x, training=training)
    outputs = model(x, training=training)
    for name, out in zip(names, outputs):
        probe(name, out)
    return outputs[-1]


def _is_loss_scaled(optimizer):
    return isinstance(optimizer, keras.optimizers.LossScaleOptimizer)


def _gradient_probes(model, grads):
    """(name, gradient) in back-propagation order (last variable first); none under loss scaling."""
    if _is_loss_scaled(model.optimizer):
        return []
    pairs = [(f"gradient of {v.path}", g) for v, g in zip(model.trainable_variables, grads) if g is not None]
    return pairs[::-1]


def _finish(model, forward, grad_pairs, weight_pairs, forward_stats, logs):
    """Remember the probes' names and shapes (host side) and add the step's verdict to ``logs``."""
    pairs = list(forward) + list(grad_pairs) + list(weight_pairs)
    model._debug_nans_probes = [(name, tuple(getattr(t, "shape", ()))) for name, t in pairs]
    stats = ops.concatenate([forward_stats, stack_stats([t for _, t in grad_pairs]),
                             stack_stats([t for _, t in weight_pairs])], axis=0)
    logs = dict(logs)
    logs.update(first_nonfinite(stats))
    return logs


def train_step(model, *args):
    """The debug train step of ``model`` (an :class:`kerasssl.methods.SSLMethod`), per backend.

    The same computation as Keras's own ``train_step`` (forward pass, loss,
    gradients, optimizer update, metrics), plus the checks. Called by
    ``SSLMethod.train_step`` when ``model.debug_nans`` is set.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        return _jax_train_step(model, *args)
    if backend == "tensorflow":
        return _tf_train_step(model, *args)
    raise NotImplementedError(f"--debug-nans supports the jax and tensorflow backends, not {backend}")


def _jax_train_step(model, state, data):
    import jax

    trainable, non_trainable, optimizer_vars, metrics_vars = state
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    names = []

    def loss_fn(trainable, non_trainable, metrics_vars):
        # Probed tensors are tracers of this function: reduce them here, return the (K, 3) table.
        with recording() as rec:
            loss, aux = model.compute_loss_and_updates(
                trainable, non_trainable, metrics_vars, x, y, sample_weight, training=True,
                optimizer_variables=optimizer_vars)
        names.extend((name, tuple(t.shape)) for name, t in rec.entries)
        return loss, (aux, stack_stats([t for _, t in rec.entries]))

    (_, (aux, forward_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        trainable, non_trainable, metrics_vars)
    unscaled_loss, y_pred, non_trainable, metrics_vars = aux
    new_trainable, optimizer_vars = model.optimizer.stateless_apply(optimizer_vars, grads, trainable)
    logs, metrics_vars = model._update_metrics_variables(metrics_vars, unscaled_loss, x, y, y_pred, sample_weight)
    forward = [(name, _Shape(shape)) for name, shape in names]
    weights = [(f"{v.path} after the update", t) for v, t in zip(model.trainable_variables, new_trainable)]
    logs = _finish(model, forward, _gradient_probes(model, grads), weights, forward_stats, logs)
    return logs, (new_trainable, non_trainable, optimizer_vars, metrics_vars)


class _Shape:
    """Stands in for a tensor whose stats were already reduced (only its shape is kept)."""

    def __init__(self, shape):
        self.shape = shape


def _tf_train_step(model, data):
    import tensorflow as tf

    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    with tf.GradientTape() as tape:
        with recording() as rec:
            y_pred = model(x, training=True)
            loss = model._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
        batch = tf.shape(next(t for t in tf.nest.flatten(x) if t is not None))[0]
        model._loss_tracker.update_state(loss, sample_weight=batch)
        scaled = model.optimizer.scale_loss(loss)
    variables = model.trainable_weights
    grads = tape.gradient(scaled, variables)
    forward_stats = stack_stats([t for _, t in rec.entries])
    grad_pairs = _gradient_probes(model, grads)
    model.optimizer.apply_gradients(zip(grads, variables))
    # Reads after the update (TF orders ops on the same variable as written).
    weights = [(f"{v.path} after the update", ops.convert_to_tensor(v)) for v in variables]
    logs = model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
    return _finish(model, rec.entries, grad_pairs, weights, forward_stats, logs)


def describe(name, shape, count, low, high):
    """One line about a non-finite tensor: name, shape, how many non-finite, finite range."""
    size = 1
    for d in shape:
        size *= int(d) if d is not None else 1
    finite = (f"finite part {low:.4g} .. {high:.4g}" if low <= high else "no finite value")
    shown = "x".join("?" if d is None else str(int(d)) for d in shape) or "scalar"
    return f"{name} (shape {shown}): {int(count)} of {size} non-finite, {finite}"


class NaNDebugReport(keras.callbacks.Callback):
    """Decodes the debug step's verdict: logs the first non-finite tensor and stops training.

    Put it first among the run's callbacks: it removes the debug entries from
    the logs it is given, so checkpoints, history and TensorBoard never see them.

    Args:
        initial_step: steps already trained (a resumed run), so reported steps count from the run's start.

    Attributes:
        failure: None, or the one-line description of the first non-finite tensor.

    Example:
        >>> report = NaNDebugReport(); model.fit(ds, callbacks=[report, guard])
        >>> report.failure
    """

    def __init__(self, initial_step=0):
        super().__init__()
        self.failure = None
        self.step = int(initial_step)
        self._epoch = 0
        self.checked_steps = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        values = _pop_keys(logs)
        if not values or self.failure is not None:
            return
        self.checked_steps += 1
        index = int(round(values[LOG_KEYS[0]]))
        if index < 0:
            return
        probes = getattr(self.model, "_debug_nans_probes", [])
        name, shape = probes[index] if index < len(probes) else (f"tensor #{index}", ())
        what = describe(name, shape, values[LOG_KEYS[1]], values[LOG_KEYS[2]], values[LOG_KEYS[3]])
        self.failure = (f"first non-finite tensor at step {self.step} (epoch {self._epoch + 1}, "
                        f"batch {batch + 1}): {what}")
        log.error("debug-nans: %s", self.failure)
        self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        _pop_keys(logs)


def _pop_keys(logs):
    if not logs:
        return {}
    import numpy as np

    return {k: float(np.asarray(logs.pop(k))) for k in LOG_KEYS if k in logs}
