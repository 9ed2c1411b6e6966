"""VICReg: invariance + variance + covariance regularisation."""

import keras

from kerasssl import losses
from kerasssl.layers.views import ASYMMETRIC
from kerasssl.methods.base import SSLMethod, register_method


@register_method("vicreg")
@keras.saving.register_keras_serializable(package="kerasssl")
class VICReg(SSLMethod):
    """VICReg (Bardes et al. 2022): 3-layer expander + variance/invariance/covariance loss.

    Args:
        encoder, preprocess, view1, view2: see :class:`SSLMethod`.
        sim_weight, var_weight, cov_weight: the loss coefficients (25, 25, 1).
        projection_dim, hidden_dim, projection_layers: expander shape.

    Example:
        >>> model = VICReg(encoder, preprocess, v1, v2, sim_weight=25.0)
    """

    default_views = ASYMMETRIC  # always blur view 1, rarely view 2

    def __init__(self, encoder, preprocess=None, view1=None, view2=None, sim_weight=25.0,
                 var_weight=25.0, cov_weight=1.0, projection_dim=512, hidden_dim=512,
                 projection_layers=3, **kwargs):
        self.sim_weight = float(sim_weight)
        self.var_weight = float(var_weight)
        self.cov_weight = float(cov_weight)
        super().__init__(encoder, preprocess, view1, view2, projection_dim=projection_dim,
                         hidden_dim=hidden_dim, projection_layers=projection_layers, **kwargs)

    def method_loss(self, out):
        return losses.vicreg(out["z1"], out["z2"], self.sim_weight, self.var_weight, self.cov_weight)

    def method_options(self):
        return {"sim_weight": self.sim_weight, "var_weight": self.var_weight, "cov_weight": self.cov_weight}
