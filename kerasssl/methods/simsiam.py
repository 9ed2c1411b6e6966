"""SimSiam: predictor + stop-gradient, no negatives and no target network."""

import keras

from kerasssl import losses
from kerasssl.heads import PredictionHead, ProjectionHead
from kerasssl.layers.views import SYMMETRIC
from kerasssl.methods.base import SSLMethod, register_method


@register_method("simsiam")
@keras.saving.register_keras_serializable(package="kerasssl")
class SimSiam(SSLMethod):
    """SimSiam (Chen & He 2021): projector with output BatchNorm, bottleneck predictor.

    Loss 0.5 * (D(p1, sg(z2)) + D(p2, sg(z1))), D = negative cosine.

    Args:
        encoder, preprocess, view1, view2: see :class:`SSLMethod`.
        prediction_hidden_dim: predictor bottleneck width.
        projection_dim, hidden_dim, projection_layers: projector shape.

    Example:
        >>> model = SimSiam(encoder, preprocess, v1, v2, prediction_hidden_dim=128)
    """

    default_views = SYMMETRIC  # both views alike

    def __init__(self, encoder, preprocess=None, view1=None, view2=None, prediction_hidden_dim=128,
                 projection_dim=512, hidden_dim=512, projection_layers=2, **kwargs):
        self.prediction_hidden_dim = int(prediction_hidden_dim)
        super().__init__(encoder, preprocess, view1, view2, projection_dim=projection_dim,
                         hidden_dim=hidden_dim, projection_layers=projection_layers, **kwargs)

    def build_heads(self):
        self.projector = ProjectionHead(self.hidden_dim, self.projection_dim, self.projection_layers,
                                        last_batch_norm=True, name="projector")
        self.projector.build((None, self.feature_dim))
        self.predictor = PredictionHead(self.prediction_hidden_dim, self.projection_dim, name="predictor")
        self.predictor.build((None, self.projection_dim))

    def project(self, v1, v2, training):
        z1, z2 = self._encode_project(v1, v2, self.encoder, self.projector, training)
        return {"z1": z1, "z2": z2, "p1": self.predictor(z1, training=training),
                "p2": self.predictor(z2, training=training)}

    def method_loss(self, out):
        return losses.simsiam_loss(out["p1"], out["p2"], out["z1"], out["z2"])

    def method_options(self):
        return {"prediction_hidden_dim": self.prediction_hidden_dim}
