"""BYOL: online network + predictor chasing an EMA target network."""

import keras
from keras import ops

from kerasssl import losses
from kerasssl.heads import PredictionHead, ProjectionHead
from kerasssl.methods.base import SSLMethod
from kerasssl.schedules import cosine_increase


class _Float32Step(keras.layers.Layer):
    """Runs a callback with autocasting off, so the EMA reads float32 weights.

    Under mixed precision the method's ``call`` runs in an autocast scope
    that would hand float16 copies of the variables to the EMA update
    (0.996 * w in float16 loses the update entirely).
    """

    def __init__(self, fn, **kwargs):
        super().__init__(autocast=False, dtype="float32", **kwargs)
        self._fn = fn  # a bound method: not tracked, owns no variables
        self.built = True

    def call(self, x):
        self._fn()
        return x


@keras.saving.register_keras_serializable(package="kerasssl")
class BYOL(SSLMethod):
    """BYOL (Grill et al. 2020) with a cosine-increasing target momentum.

    The target encoder and projector are non-trainable copies of the online
    ones. Each training call first moves every target variable (weights and
    BatchNorm statistics) towards its online twin,
    ``t <- tau t + (1 - tau) o`` with ``tau`` going from ``base_momentum`` to 1
    over ``total_steps`` along a half cosine. The update is a
    ``variable.assign`` inside ``call(training=True)``: the TF trainer runs it in
    the step's graph and the JAX trainer threads it as non-trainable state.
    The target gets no gradient (non-trainable, and stop_gradient in the loss).

    Args:
        encoder, preprocess, view1, view2: see :class:`SSLMethod`.
        base_momentum: EMA momentum at step 0 (0.99 for short runs, 0.996 in the paper).
        total_steps: optimizer steps of the whole run (set by ``kerasssl.pretrain``).
        prediction_hidden_dim: predictor width.
        projection_dim, hidden_dim, projection_layers: projector shape.

    Example:
        >>> model = BYOL(encoder, preprocess, v1, v2, base_momentum=0.99, total_steps=1000)
    """

    method_name = "byol"
    needs_total_steps = True

    def __init__(self, encoder, preprocess=None, view1=None, view2=None, base_momentum=0.99,
                 total_steps=1000, prediction_hidden_dim=512, projection_dim=256, hidden_dim=512,
                 projection_layers=2, **kwargs):
        self.base_momentum = float(base_momentum)
        self.total_steps = int(total_steps)
        self.prediction_hidden_dim = int(prediction_hidden_dim)
        super().__init__(encoder, preprocess, view1, view2, projection_dim=projection_dim,
                         hidden_dim=hidden_dim, projection_layers=projection_layers, **kwargs)

    def build_heads(self):
        head_args = (self.hidden_dim, self.projection_dim, self.projection_layers)
        self.projector = ProjectionHead(*head_args, name="projector")
        self.projector.build((None, self.feature_dim))
        self.predictor = PredictionHead(self.prediction_hidden_dim, self.projection_dim, name="predictor")
        self.predictor.build((None, self.projection_dim))

        self.target_encoder = keras.models.clone_model(self.encoder)
        self.target_encoder.name = "target_" + self.encoder.name
        self.target_projector = ProjectionHead(*head_args, name="target_projector")
        self.target_projector.build((None, self.feature_dim))
        self.target_encoder.set_weights(self.encoder.get_weights())
        self.target_projector.set_weights(self.projector.get_weights())
        self.target_encoder.trainable = False
        self.target_projector.trainable = False
        self.ema_step = self.add_weight(shape=(), initializer="zeros", dtype="float32",
                                        trainable=False, autocast=False, name="ema_step")
        self._ema = _Float32Step(self._update_target, name="target_ema")

    def _pairs(self):
        online = self.encoder.weights + self.projector.weights
        target = self.target_encoder.weights + self.target_projector.weights
        return list(zip(target, online))

    def target_momentum(self):
        """Current EMA momentum tau (a float32 tensor)."""
        return cosine_increase(self.ema_step, self.total_steps, self.base_momentum)

    def _update_target(self):
        tau = self.target_momentum()
        for t, o in self._pairs():
            t.assign(tau * t.value + (1.0 - tau) * ops.cast(o.value, t.dtype))
        self.ema_step.assign(self.ema_step.value + 1.0)

    def project(self, v1, v2, training):
        if training:
            v1 = self._ema(v1)
        z1, z2 = self._encode_project(v1, v2, self.encoder, self.projector, training)
        t1, t2 = self._encode_project(v1, v2, self.target_encoder, self.target_projector, False)
        return {
            "z1": z1,
            "p1": self.predictor(z1, training=training),
            "p2": self.predictor(z2, training=training),
            "t1": ops.stop_gradient(t1),
            "t2": ops.stop_gradient(t2),
        }

    def method_loss(self, out):
        return losses.byol_loss(out["p1"], out["p2"], out["t1"], out["t2"])

    def method_options(self):
        return {"base_momentum": self.base_momentum, "total_steps": self.total_steps,
                "prediction_hidden_dim": self.prediction_hidden_dim}
