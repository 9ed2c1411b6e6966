"""BYOL: online network + predictor chasing an EMA target network."""

import keras
from keras import ops

from kerasssl import losses
from kerasssl.heads import PredictionHead, ProjectionHead
from kerasssl.layers.views import ASYMMETRIC
from kerasssl.methods.base import SSLMethod, register_method
from kerasssl.methods.momentum import MomentumMixin, momentum_copy


@register_method("byol")
@keras.saving.register_keras_serializable(package="kerasssl")
class BYOL(MomentumMixin, SSLMethod):
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

    default_views = ASYMMETRIC  # always blur view 1, rarely view 2

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

        self.target_encoder = momentum_copy(self.encoder)
        self.target_projector = momentum_copy(self.projector, "target_projector", (None, self.feature_dim))
        self.init_momentum()

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
        return dict(self.momentum_options(), prediction_hidden_dim=self.prediction_hidden_dim)
