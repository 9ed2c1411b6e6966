"""What every kerasssl augmentation layer shares: seeding, training switch, dtypes.

Subclasses implement :meth:`RandomImageLayer.augment` on a float32 batch
``(N, H, W, C)``; the base class handles the rest the same way everywhere:

- identity when ``training=False`` (the input comes back, cast to the
  layer's compute dtype);
- a single image ``(H, W, C)`` is accepted (as in ``tf.data.Dataset.map``
  before batching) and comes back with the same rank;
- the maths runs in float32 whatever the dtype policy, and the result is
  returned in ``self.compute_dtype`` (float16 under ``mixed_float16``);
- randomness comes from one ``keras.random.SeedGenerator`` per layer, so a
  layer is deterministic for a given seed and stateless under JAX (the
  generator's state is a variable the JAX trainer threads through); under a
  ``tf.distribute`` strategy each replica draws its own numbers
  (:class:`ReplicaSeedGenerator`).

The layers work in ``tf.data.Dataset.map`` with the TensorFlow backend. With
the JAX backend, put them in the model (on the accelerator, their purpose):
``keras.ops`` there produce JAX arrays, which a tf.data graph cannot hold.
"""

import numbers

import keras
from keras import ops


#: Replica r of a tf.distribute strategy draws from counter r * 2**40 on: disjoint
#: streams for any realistic run (2**40 draws per layer per replica).
REPLICA_COUNTER_STRIDE = 2**40


class ReplicaSeedGenerator(keras.random.SeedGenerator):
    """A ``SeedGenerator`` whose draws differ between ``tf.distribute`` replicas.

    Under ``MirroredStrategy`` and ``MultiWorkerMirroredStrategy`` every replica
    holds its own copy of the generator's state, all equal, so a plain
    generator hands every replica the same numbers: image i of each replica's
    shard would get the same rotation, crop and noise field. Here replica r
    offsets the counter half of the seed by ``r * REPLICA_COUNTER_STRIDE``;
    replica 0 and a single device keep the plain stream, and the layer seed
    (the other half) is untouched. JAX shards one global draw instead, so
    nothing changes there.

    Example:
        >>> gen = ReplicaSeedGenerator(7)
        >>> keras.random.uniform((4,), seed=gen)  # as keras.random.SeedGenerator(7)
    """

    def next(self, ordered=True):
        seed = super().next(ordered=ordered)
        if keras.backend.backend() != "tensorflow":
            return seed
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return seed
        replica = tf.cast(context.replica_id_in_sync_group, seed.dtype)
        return seed + tf.stack([tf.zeros_like(replica), replica * REPLICA_COUNTER_STRIDE])


class RandomImageLayer(keras.layers.Layer):
    """Base class of the random image augmentation layers.

    Args:
        seed: integer seed of the layer's ``SeedGenerator``; None draws one.
        **kwargs: base ``keras.layers.Layer`` arguments (name, dtype, ...).

    Example:
        >>> class AddOne(RandomImageLayer):
        ...     def augment(self, images):
        ...         return images + 1.0
        >>> AddOne()(np.zeros((2, 8, 8, 1)), training=True)
    """

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
                raise ValueError(f"seed must be an int or None, got {seed!r}")
            seed = int(seed)  # NumPy integers too; the config stays plain JSON
        self.seed = seed
        self.seed_generator = ReplicaSeedGenerator(seed, name="seed_generator")
        self.built = True

    def augment(self, images):
        """Augment a float32 batch ``(N, H, W, C)``; return float32 of the same shape."""
        raise NotImplementedError

    def check_bands(self, channels):
        """Refuse a band count the layer's per-band settings do not fit (ValueError).

        Called with the static channel count in both training modes and when a
        functional model is built, so a mismatch fails at once, not at the
        first training step. The default accepts any count.
        """

    def call(self, inputs, training=True):
        if len(inputs.shape) in (3, 4):
            self.check_bands(inputs.shape[-1])
        if not training:
            return ops.cast(inputs, self.compute_dtype)
        images = ops.cast(inputs, "float32")
        rank = len(images.shape)
        if rank not in (3, 4):
            raise ValueError(
                f"{self.__class__.__name__} expects images (N, H, W, C) or (H, W, C), "
                f"got shape {tuple(images.shape)}"
            )
        if rank == 3:
            images = ops.expand_dims(images, 0)
        outputs = self.augment(images)
        if rank == 3:
            outputs = ops.squeeze(outputs, 0)
        return ops.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        if len(input_shape) in (3, 4):
            self.check_bands(input_shape[-1])
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config["seed"] = self.seed
        return config


def value_range(value, name, symmetric=False, minimum=None):
    """A ``(low, high)`` pair of floats from a number or a pair.

    Args:
        value: a number or a two-number sequence.
        name: argument name used in the error message.
        symmetric: a single number ``v`` means ``(-v, v)`` (as Keras's
            ``factor``); otherwise it means ``(v, v)``.
        minimum: values below this are refused.

    Example:
        >>> value_range(0.1, "factor", symmetric=True)
        (-0.1, 0.1)
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        low, high = (-abs(value), abs(value)) if symmetric else (value, value)
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        low, high = value
    else:
        raise ValueError(f"{name} must be a number or a (low, high) pair, got {value!r}")
    try:
        low, high = float(low), float(high)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numbers, got {value!r}") from None
    if low > high:
        raise ValueError(f"{name}: low must be <= high, got {value!r}")
    if minimum is not None and low < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return low, high


def probability_value(value, name="probability"):
    """A float in [0, 1], or a ValueError naming the argument."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return value
