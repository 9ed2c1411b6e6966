"""The shared self-supervised training step, one code path for TF and JAX.

A method is a ``keras.Model`` whose ``call`` runs, inside the train step::

    raw pixels -> preprocess -> view1 / view2 (augmentation, on the accelerator)
               -> encoder -> projection head (-> predictor)

and returns a dict of projections; ``compute_loss`` casts them to float32 and
applies the method's pure loss from :mod:`kerasssl.losses`. Keras's own
backend-specific ``train_step`` then does the gradients, loss scaling
(``compile`` wraps the optimizer in a ``LossScaleOptimizer`` when the model's
policy is ``mixed_float16``; bfloat16 needs no scaling), metrics and
distribution. Subclasses only define their heads (:meth:`build_heads`), the
forward pass from views to projections (:meth:`project`) and the loss
(:meth:`method_loss`), say which views they train on (``default_views``: a
preset of :mod:`kerasssl.layers.views` or their own pair of stage dicts), and
register under their name with :func:`register_method`; one file holds it all::

    @register_method("mine")
    @keras.saving.register_keras_serializable(package="kerasssl")
    class Mine(SSLMethod):
        default_views = views.ASYMMETRIC   # from kerasssl.layers import views
        def method_loss(self, out): ...

With ``model.debug_nans = True`` (``--debug-nans``) the step is
:func:`kerasssl.nandebug.train_step`: the same step, plus a check of every
tensor it computes, stopping at the first non-finite one. The forward pass and
the losses name their tensors with :func:`kerasssl.nandebug.probe` (a no-op
otherwise).

Monitors reported by ``fit`` every epoch: ``loss`` and ``embedding_std``
(std of L2-normalised projections over the batch: about 1/sqrt(d) healthy,
about 0 collapsed); ``step_loss`` is each step's own loss (:class:`LastValue`),
which the pretraining history records per step.
"""

from __future__ import annotations

import keras
from keras import ops

from kerasssl import distribute, losses, nandebug
from kerasssl.nandebug import probe
from kerasssl.layers import views
from kerasssl.registry import Registry

#: Every method, by name; filled by :func:`register_method` as method modules are imported.
METHODS = Registry("method")


def register_method(name):
    """Class decorator: register an :class:`SSLMethod` subclass as ``name``.

    Sets ``cls.method_name``; ``kerasssl.methods.get(name)`` then returns the
    class, and ``kerasssl pretrain --method`` offers it.

    Example:
        >>> @register_method("simclr")
        ... class SimCLR(SSLMethod): ...
    """
    def decorate(cls):
        if not (isinstance(cls, type) and issubclass(cls, SSLMethod)):
            raise TypeError(f"register_method({name!r}) decorates SSLMethod subclasses, not {cls!r}")
        cls.method_name = name
        return METHODS.register(name)(cls)

    return decorate


@keras.saving.register_keras_serializable(package="kerasssl")
class LastValue(keras.metrics.Metric):
    """A metric whose result is its latest update: the step's loss, where ``Mean`` averages the epoch.

    Across replicas the values are averaged (each replica's loss covers its
    share of the global batch).

    Args:
        name: metric name (the log key).
        dtype: the value's dtype.

    Example:
        >>> tracker = LastValue(name="step_loss"); tracker.update_state(2.5); float(tracker.result())
        2.5
    """

    def __init__(self, name="last_value", dtype="float32"):
        super().__init__(name=name, dtype=dtype)
        self.last = self.add_variable(shape=(), initializer="zeros", dtype=self.dtype, aggregation="mean",
                                      name="last")

    def update_state(self, value):
        self.last.assign(ops.cast(value, self.dtype))

    def result(self):
        # An op, not the variable's read: under MultiWorkerMirroredStrategy a bare read has no
        # device, and the cross-worker reduce of the step's logs refuses it.
        return ops.add(self.last, ops.zeros((), self.dtype))

    def reset_state(self):
        self.last.assign(ops.zeros((), self.dtype))


@keras.saving.register_keras_serializable(package="kerasssl")
class SSLMethod(keras.Model):
    """Base of all methods: views inside the step, float32 loss, collapse monitor.

    Args:
        encoder: backbone mapping preprocessed (H, W, C) images to (D,) features.
        preprocess: layer mapping raw pixels to normalised images
            (``kerasssl.layers.Preprocess``); identity if None.
        view1, view2: augmentation layers/pipelines making the two views.
        projection_dim, hidden_dim, projection_layers: projection head shape.
        **kwargs: keras.Model arguments (name).

    Example:
        >>> model = SimCLR(encoder, preprocess, view1, view2, temperature=0.2)
        >>> model.compile(optimizer=keras.optimizers.AdamW(1e-3))
        >>> model.fit(raw_image_dataset, epochs=10)
    """

    #: registry name; set by :func:`register_method`.
    method_name = "base"
    #: the (view1, view2) augmentation defaults, overridable by ``pretrain.augment``.
    default_views = views.SYMMETRIC
    #: BYOL needs the run's total optimizer steps (momentum schedule).
    needs_total_steps = False

    def __init__(
        self,
        encoder,
        preprocess=None,
        view1=None,
        view2=None,
        projection_dim=128,
        hidden_dim=512,
        projection_layers=2,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.preprocess = preprocess if preprocess is not None else keras.layers.Identity(name="no_preprocess")
        self.view1 = view1 if view1 is not None else keras.layers.Identity(name="view1")
        self.view2 = view2 if view2 is not None else keras.layers.Identity(name="view2")
        self.projection_dim = int(projection_dim)
        self.hidden_dim = int(hidden_dim)
        self.projection_layers = int(projection_layers)
        self.feature_dim = int(encoder.output_shape[-1])
        self.collapse_tracker = keras.metrics.Mean(name="embedding_std")
        self.step_loss_tracker = LastValue(name="step_loss")  # the history's per-step loss curve
        #: run :func:`kerasssl.nandebug.train_step` (set before ``fit``; not saved with the model).
        self.debug_nans = False
        self.build_heads()

    # -- to be specialised -------------------------------------------------
    def build_heads(self):
        """Create (and build) the heads; default: one projection head."""
        from kerasssl.heads import ProjectionHead

        self.projector = ProjectionHead(
            hidden_dim=self.hidden_dim,
            output_dim=self.projection_dim,
            num_layers=self.projection_layers,
            name="projector",
        )
        self.projector.build((None, self.feature_dim))

    def project(self, v1, v2, training):
        """Views -> dict of projections; must contain ``z1`` (monitored)."""
        z1, z2 = self._encode_project(v1, v2, self.encoder, self.projector, training)
        return {"z1": z1, "z2": z2}

    def method_loss(self, out):
        """float32 outputs dict -> float32 scalar loss."""
        raise NotImplementedError

    def method_options(self):
        """The method-specific constructor arguments (for get_config)."""
        return {}

    # -- shared machinery --------------------------------------------------
    @staticmethod
    def _encode_project(v1, v2, encoder, projector, training):
        # One encoder call on both views: half the kernel launches, and the
        # BatchNorm statistics see the whole 2N batch (as in SimCLR).
        n = ops.shape(v1)[0]
        both = ops.concatenate([v1, v2], axis=0)
        if nandebug.recording_active():  # debug step: every encoder layer's output is checked too
            h = nandebug.encode_layers(encoder, both, training)
        else:
            h = encoder(both, training=training)
        probe(f"{encoder.name} features of view 1", h[:n])
        probe(f"{encoder.name} features of view 2", h[n:])
        z = projector(h, training=training)
        return probe(f"{projector.name} of view 1", z[:n]), probe(f"{projector.name} of view 2", z[n:])

    def make_views(self, x, training):
        # Not the raw batch: NaN pixels there are expected, the Preprocess layer repairs them.
        x = probe("preprocessed batch", self.preprocess(x))
        return (probe("view 1", self.view1(x, training=training)),
                probe("view 2", self.view2(x, training=training)))

    def call(self, x, training=False):
        v1, v2 = self.make_views(x, training)
        out = self.project(v1, v2, training)
        for key, value in out.items():
            probe(f"output {key}", value)
        return out

    def train_step(self, *args):
        # Off: Keras's own step, untouched (the check costs nothing when not asked for).
        if self.debug_nans:
            return nandebug.train_step(self, *args)
        return super().train_step(*args)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        out = {k: ops.cast(v, "float32") for k, v in y_pred.items()}
        loss = ops.cast(self.method_loss(out), "float32")
        if self.losses:
            loss = loss + ops.cast(ops.sum(self.losses), "float32")
        probe("loss", loss)
        self.collapse_tracker.update_state(losses.embedding_std(out["z1"]))
        self.step_loss_tracker.update_state(loss)
        # Under tf.distribute Keras sums replica gradients: return loss / replicas
        # (what keras.Model.compute_loss does) so training matches one device.
        return distribute.scale_loss_for_replicas(loss)

    def get_config(self):
        config = {
            "name": self.name,
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "preprocess": keras.saving.serialize_keras_object(self.preprocess),
            "view1": keras.saving.serialize_keras_object(self.view1),
            "view2": keras.saving.serialize_keras_object(self.view2),
            "projection_dim": self.projection_dim,
            "hidden_dim": self.hidden_dim,
            "projection_layers": self.projection_layers,
        }
        config.update(self.method_options())
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("encoder", "preprocess", "view1", "view2"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
