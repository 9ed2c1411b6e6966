"""Barlow Twins: the views' cross-correlation matrix pushed to the identity."""

import keras

from kerasssl import losses
from kerasssl.layers.views import ASYMMETRIC
from kerasssl.methods.base import SSLMethod, register_method


@register_method("barlow_twins")
@keras.saving.register_keras_serializable(package="kerasssl")
class BarlowTwins(SSLMethod):
    """Barlow Twins (Zbontar et al. 2021): 3-layer projector + cross-correlation loss.

    Args:
        encoder, preprocess, view1, view2: see :class:`SSLMethod`.
        lambda_offdiag: weight of the off-diagonal (redundancy) term.
        projection_dim, hidden_dim, projection_layers: projector shape.

    Example:
        >>> model = BarlowTwins(encoder, preprocess, v1, v2, lambda_offdiag=5e-3)
    """

    default_views = ASYMMETRIC  # always blur view 1, rarely view 2

    def __init__(self, encoder, preprocess=None, view1=None, view2=None, lambda_offdiag=5e-3,
                 projection_dim=512, hidden_dim=512, projection_layers=3, **kwargs):
        self.lambda_offdiag = float(lambda_offdiag)
        super().__init__(encoder, preprocess, view1, view2, projection_dim=projection_dim,
                         hidden_dim=hidden_dim, projection_layers=projection_layers, **kwargs)

    def method_loss(self, out):
        return losses.barlow_twins(out["z1"], out["z2"], lambda_offdiag=self.lambda_offdiag)

    def method_options(self):
        return {"lambda_offdiag": self.lambda_offdiag}
