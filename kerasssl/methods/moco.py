"""MoCo: a momentum (EMA) key encoder and InfoNCE; v2 scores against a queue of past keys."""

import keras
from keras import ops

from kerasssl import distribute, losses
from kerasssl.heads import PredictionHead, ProjectionHead
from kerasssl.layers.views import SYMMETRIC
from kerasssl.methods.base import SSLMethod, register_method
from kerasssl.methods.momentum import MomentumMixin, momentum_copy, use_batch_statistics

VERSIONS = (2, 3)


def random_unit_rows(shape, dtype="float32"):
    """Initial queue: rows drawn from a standard normal and L2-normalised (as MoCo does)."""
    return losses.l2_normalize(keras.initializers.RandomNormal(stddev=1.0)(shape, dtype="float32"))


@register_method("moco")
@keras.saving.register_keras_serializable(package="kerasssl")
class MoCo(MomentumMixin, SSLMethod):
    """MoCo v2 (Chen et al. 2020) or v3 (Chen, Xie & He 2021) with a cosine key momentum.

    Queries come from the online encoder + projector, keys from their EMA
    copies (see :mod:`kerasssl.methods.momentum`; no gradient). The loss is
    symmetric over the two views.

    - ``version=2``: each query's negatives are the ``queue_size`` keys of
      earlier batches (:func:`kerasssl.losses.moco_loss`), which decouples the
      number of negatives from the batch size (Stein et al. 2022 use 65,536 for
      lens images). The queue is a non-trainable float32 variable of
      L2-normalised keys, initialised with random unit vectors, plus an int32
      write pointer; both are checkpointed with the model. A training call
      reads the queue into its outputs (what the loss scores against) and only
      then writes this batch's keys of both views, gathered over the replicas
      under ``tf.distribute`` so every replica holds the same queue, at
      ``pointer, pointer + 1, ...`` modulo ``queue_size`` (a ring buffer: any
      batch size works; a batch larger than the queue keeps its last keys).
      The key encoder's BatchNorm uses its moving averages: batch statistics
      would let the query tell this batch's positive key from the older
      queued negatives (the leak MoCo's shuffle-BN closes).
    - ``version=3``: no queue; a predictor on the queries and in-batch
      negatives: the momentum keys of the whole (global) batch
      (:func:`kerasssl.losses.moco_v3_loss`); the key encoder's BatchNorm
      uses batch statistics (:func:`kerasssl.methods.momentum.use_batch_statistics`).

    Args:
        encoder, preprocess, view1, view2: see :class:`SSLMethod`.
        version: 2 (queue) or 3 (predictor, in-batch negatives).
        queue_size: number of negative keys in the v2 queue.
        temperature: InfoNCE temperature (0.2 in MoCo v2).
        base_momentum: key-encoder EMA momentum at step 0, rising to 1 along
            a half cosine (0.99 for short runs; MoCo v2 used a constant 0.999).
        total_steps: optimizer steps of the whole run (set by ``kerasssl.pretrain``).
        prediction_hidden_dim: v3 predictor width (unused by v2).
        projection_dim, hidden_dim, projection_layers: projector shape.

    Example:
        >>> model = MoCo(encoder, preprocess, v1, v2, queue_size=4096, temperature=0.2)
        >>> model_v3 = MoCo(encoder, preprocess, v1, v2, version=3)
    """

    default_views = SYMMETRIC  # both views alike

    def __init__(self, encoder, preprocess=None, view1=None, view2=None, version=2, queue_size=65536,
                 temperature=0.2, base_momentum=0.99, total_steps=1000, prediction_hidden_dim=512,
                 projection_dim=128, hidden_dim=512, projection_layers=2, **kwargs):
        if int(version) not in VERSIONS:
            raise ValueError(f"version must be 2 or 3, got {version!r}")
        if int(queue_size) < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size!r}")
        if not float(temperature) > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.version = int(version)
        self.queue_size = int(queue_size)
        self.temperature = float(temperature)
        self.base_momentum = float(base_momentum)
        self.total_steps = int(total_steps)
        self.prediction_hidden_dim = int(prediction_hidden_dim)
        super().__init__(encoder, preprocess, view1, view2, projection_dim=projection_dim,
                         hidden_dim=hidden_dim, projection_layers=projection_layers, **kwargs)

    def build_heads(self):
        self.projector = ProjectionHead(self.hidden_dim, self.projection_dim, self.projection_layers,
                                        name="projector")
        self.projector.build((None, self.feature_dim))
        if self.version == 3:
            self.predictor = PredictionHead(self.prediction_hidden_dim, self.projection_dim, name="predictor")
            self.predictor.build((None, self.projection_dim))
        self.target_encoder = momentum_copy(self.encoder)
        self.target_projector = momentum_copy(self.projector, "target_projector", (None, self.feature_dim))
        if self.version == 3:
            # v3's negatives share the positives' batch: batch statistics leak
            # nothing there, and the EMA'd moving averages lag early on.
            use_batch_statistics(self.target_encoder)
            use_batch_statistics(self.target_projector)
        self.init_momentum()
        if self.version == 2:
            self.queue = self.add_weight(shape=(self.queue_size, self.projection_dim), dtype="float32",
                                         initializer=random_unit_rows, trainable=False, autocast=False,
                                         name="queue")
            self.queue_pointer = self.add_weight(shape=(), dtype="int32", initializer="zeros",
                                                 trainable=False, autocast=False, name="queue_pointer")

    def project(self, v1, v2, training):
        if training:
            v1 = self._ema(v1)
        z1, z2 = self._encode_project(v1, v2, self.encoder, self.projector, training)
        # v2's key encoder normalises with its moving averages: with batch
        # statistics the positive key (this batch) would differ from the queued
        # negatives (older batches) in a way the query can learn to spot (the
        # leak MoCo closes with shuffle-BN); moving averages close it on any
        # number of devices.
        key_training = training and self.version == 3
        k1, k2 = self._encode_project(v1, v2, self.target_encoder, self.target_projector, key_training)
        out = {"z1": z1, "z2": z2, "k1": ops.stop_gradient(k1), "k2": ops.stop_gradient(k2)}
        if self.version == 3:
            out["p1"] = self.predictor(z1, training=training)
            out["p2"] = self.predictor(z2, training=training)
            return out
        # A copy, not the variable (Keras's convert_to_tensor returns the variable
        # itself on TF, which the loss would read after the enqueue below): the
        # TF graph orders this read before the write, eager copies now, and the
        # JAX trainer hands this value to the loss: all score the old queue.
        out["queue"] = ops.copy(self.queue)
        if training:
            self._enqueue(out["k1"], out["k2"])
        return out

    def _enqueue(self, k1, k2):
        """Write the (global) batch's keys of both views into the ring buffer."""
        (all_k1, all_k2), _ = distribute.gather_replicas(k1, k2)
        if all_k1 is not None:
            k1, k2 = all_k1, all_k2
        keys = losses.l2_normalize(ops.concatenate([k1, k2], axis=0))
        n = ops.shape(keys)[0]  # static under JAX (arange needs it), maybe a tensor on TF
        pointer = ops.copy(self.queue_pointer)
        index = (pointer + ops.arange(n, dtype="int32")) % self.queue_size
        # More keys than slots: only the last queue_size would survive anyway.
        keys, index = keys[-self.queue_size:], index[-self.queue_size:]
        self.queue.assign(ops.scatter_update(self.queue.value, ops.expand_dims(index, 1), keys))
        self.queue_pointer.assign((pointer + ops.cast(n, "int32")) % self.queue_size)

    def method_loss(self, out):
        if self.version == 2:
            return losses.moco_loss(out["z1"], out["z2"], out["k1"], out["k2"], out["queue"],
                                    temperature=self.temperature)
        # Negatives from the whole global batch under tf.distribute (no-op otherwise).
        (all_k1, all_k2), offset = distribute.gather_replicas(out["k1"], out["k2"])
        return losses.moco_v3_loss(out["p1"], out["p2"], out["k1"], out["k2"], temperature=self.temperature,
                                   all_k1=all_k1, all_k2=all_k2, offset=offset)

    def method_options(self):
        return dict(self.momentum_options(), version=self.version, queue_size=self.queue_size,
                    temperature=self.temperature, prediction_hidden_dim=self.prediction_hidden_dim)
