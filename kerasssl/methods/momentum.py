"""The EMA target ("momentum") network machinery shared by BYOL, MoCo and DINO.

A momentum method keeps non-trainable copies of some online layers (the
encoder and its head) and, at the start of every training call, moves each
copy's variables (weights and BatchNorm statistics) towards the online ones,
``t <- tau t + (1 - tau) o``, with ``tau`` rising from ``base_momentum`` to 1
along a half cosine over the run's ``total_steps`` (set by
``kerasssl.pretrain``). The update is a ``variable.assign`` inside
``call(training=True)``: the TF trainer runs it in the step's graph and the
JAX trainer threads it as non-trainable state.

Example:
    >>> class MyMethod(MomentumMixin, SSLMethod):
    ...     def build_heads(self):
    ...         ...                                   # online encoder + heads
    ...         self.target_encoder = momentum_copy(self.encoder)
    ...         self.target_projector = momentum_copy(self.projector, "target_projector", (None, self.feature_dim))
    ...         self.init_momentum()      # EMA pairs: encoder and each of momentum_heads ("projector")
"""

import keras
from keras import ops

from kerasssl.schedules import cosine_increase


class Float32Step(keras.layers.Layer):
    """Runs a callback with autocasting off, so the EMA reads float32 weights.

    Under mixed precision the method's ``call`` runs in an autocast scope
    that would hand float16 copies of the variables to the EMA update
    (0.996 * w in float16 loses the update entirely).

    Args:
        fn: a zero-argument callable (a bound method: not tracked, owns no variables).
        **kwargs: base Layer arguments (name).

    Example:
        >>> self._ema = Float32Step(self.update_target, name="target_ema")
        >>> v1 = self._ema(v1)      # runs the update, passes v1 through
    """

    def __init__(self, fn, **kwargs):
        super().__init__(autocast=False, dtype="float32", **kwargs)
        self._fn = fn
        self.built = True

    def call(self, x):
        self._fn()
        return x


def momentum_copy(online, name=None, input_shape=None):
    """A non-trainable copy of ``online`` with the same weights (the EMA target).

    Args:
        online: a functional/sequential ``keras.Model`` (cloned with
            ``clone_model``) or a serialisable layer (rebuilt from its config).
        name: the copy's name (default ``"target_" + online.name``).
        input_shape: the build shape of a layer copy (a Model needs none).

    Returns:
        The copy, built, with ``trainable = False``.

    Example:
        >>> target_projector = momentum_copy(projector, "target_projector", (None, 512))
    """
    name = name or "target_" + online.name
    if isinstance(online, keras.Model):
        target = keras.models.clone_model(online)
        target.name = name
    else:
        config = dict(online.get_config(), name=name)
        target = type(online).from_config(config)
        target.build(input_shape)
    target.set_weights(online.get_weights())
    target.trainable = False
    return target


def use_batch_statistics(target):
    """Let a frozen target's BatchNorm layers normalise with batch statistics.

    Keras runs a BatchNormalization layer whose ``trainable`` is False in
    inference mode (moving averages) even under ``training=True``. A target
    network, though, should see each batch as its online twin does (the
    momentum encoders of MoCo and DINO run in training mode): early in a run
    the EMA'd moving averages are far from the batch statistics and flatten
    the target's outputs across images, which starves DINO's centred teacher
    of signal (it collapses to uniform). So each BatchNorm *layer* is made
    trainable again while its scale and offset *variables* stay non-trainable:
    the optimizer never sees them, the EMA still sets them, and calls with
    ``training=True`` use (and fold into the moving averages) the batch's
    moments, synchronised across replicas like any BatchNorm after
    ``kerasssl.distribute.synchronize_batchnorm``.

    Args:
        target: a network made by :func:`momentum_copy`.

    Returns:
        The number of BatchNorm layers switched.

    Example:
        >>> use_batch_statistics(self.target_encoder)
        3
    """
    count = 0
    for layer in target._flatten_layers(include_self=True, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = True  # the layer flag BatchNorm consults ...
            for variable in layer.weights:
                variable.trainable = False  # ... but no variable for the optimizer
            count += 1
    return count


class MomentumMixin:
    """EMA target updates for an :class:`~kerasssl.methods.base.SSLMethod` subclass.

    The subclass sets ``base_momentum`` and ``total_steps`` before
    ``SSLMethod.__init__`` (which calls ``build_heads``), creates its target
    copies in ``build_heads`` and then calls :meth:`init_momentum`; :meth:`momentum_pairs`
    pairs ``target_encoder`` and ``target_<head>`` for each of :attr:`momentum_heads`. In ``project`` it passes a tensor through
    ``self._ema`` when training, which runs :meth:`update_target` first.

    Example:
        >>> if training:
        ...     v1 = self._ema(v1)
    """

    needs_total_steps = True
    #: Heads with an EMA twin named ``target_<name>`` (the encoder always has one, ``target_encoder``).
    momentum_heads = ("projector",)

    def init_momentum(self):
        """Create the step counter and the float32 EMA step (call at the end of build_heads)."""
        self.ema_step = self.add_weight(shape=(), initializer="zeros", dtype="float32",
                                        trainable=False, autocast=False, name="ema_step")
        self._ema = Float32Step(self.update_target, name="target_ema")

    def momentum_pairs(self):
        """``[(target_variable, online_variable), ...]`` moved by the EMA: the encoder and :attr:`momentum_heads`."""
        online, target = list(self.encoder.weights), list(self.target_encoder.weights)
        for name in self.momentum_heads:
            online += getattr(self, name).weights
            target += getattr(self, "target_" + name).weights
        return list(zip(target, online))

    def target_momentum(self):
        """Current EMA momentum tau (a float32 tensor)."""
        return cosine_increase(self.ema_step, self.total_steps, self.base_momentum)

    def update_target(self):
        """One EMA step of every target variable, then ``ema_step += 1``."""
        tau = self.target_momentum()
        for t, o in self.momentum_pairs():
            t.assign(tau * t.value + (1.0 - tau) * ops.cast(o.value, t.dtype))
        self.ema_step.assign(self.ema_step.value + 1.0)

    def momentum_options(self):
        """The momentum constructor arguments (for get_config)."""
        return {"base_momentum": self.base_momentum, "total_steps": self.total_steps}
