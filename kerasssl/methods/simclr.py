"""SimCLR: NT-Xent over both views with intra- and cross-view negatives."""

import keras

from kerasssl import distribute, losses
from kerasssl.layers.views import SYMMETRIC
from kerasssl.methods.base import SSLMethod, register_method


@register_method("simclr")
@keras.saving.register_keras_serializable(package="kerasssl")
class SimCLR(SSLMethod):
    """SimCLR (Chen et al. 2020): encoder + 2-layer projection head + NT-Xent.

    The loss takes the whole (local) batch's projections of both views, so a
    distributed wrapper can gather negatives across replicas around it.

    Args:
        encoder, preprocess, view1, view2: see :class:`SSLMethod`.
        temperature: NT-Xent temperature.
        projection_dim, hidden_dim, projection_layers: projection head.

    Example:
        >>> model = SimCLR(build_encoder("tiny", (32, 32, 3)), Preprocess(), v1, v2, temperature=0.2)
    """

    default_views = SYMMETRIC  # both views alike

    def __init__(self, encoder, preprocess=None, view1=None, view2=None, temperature=0.2,
                 projection_dim=128, hidden_dim=512, projection_layers=2, **kwargs):
        self.temperature = float(temperature)
        super().__init__(encoder, preprocess, view1, view2, projection_dim=projection_dim,
                         hidden_dim=hidden_dim, projection_layers=projection_layers, **kwargs)

    def method_loss(self, out):
        # Negatives from the whole global batch under tf.distribute (no-op otherwise).
        (all_z1, all_z2), offset = distribute.gather_replicas(out["z1"], out["z2"])
        return losses.nt_xent(out["z1"], out["z2"], temperature=self.temperature,
                              all_z1=all_z1, all_z2=all_z2, offset=offset)

    def method_options(self):
        return {"temperature": self.temperature}
