"""MLP heads on top of the encoder: projection (all methods) and prediction (BYOL, SimSiam).

Example:
    >>> proj = ProjectionHead(hidden_dim=512, output_dim=128, num_layers=2)
    >>> pred = PredictionHead(hidden_dim=128, output_dim=128)
    >>> pred(proj(features)).shape
    (N, 128)
"""

import keras


@keras.saving.register_keras_serializable(package="kerasssl")
class ProjectionHead(keras.layers.Layer):
    """(num_layers - 1) x [Dense -> BatchNorm -> ReLU] then Dense (-> BatchNorm).

    Args:
        hidden_dim: width of the hidden layers.
        output_dim: projection size.
        num_layers: total Dense layers (>= 1).
        last_batch_norm: a BatchNorm without scale on the output (SimSiam,
            Barlow Twins use one).
        **kwargs: base Layer arguments (name, dtype).

    Example:
        >>> head = ProjectionHead(hidden_dim=256, output_dim=64)
        >>> head(np.zeros((4, 1280))).shape
        (4, 64)
    """

    def __init__(self, hidden_dim=512, output_dim=128, num_layers=2, last_batch_norm=False, **kwargs):
        super().__init__(**kwargs)
        if num_layers < 1:
            raise ValueError("num_layers must be >= 1")
        self.hidden_dim = int(hidden_dim)
        self.output_dim = int(output_dim)
        self.num_layers = int(num_layers)
        self.last_batch_norm = bool(last_batch_norm)
        self.blocks = []
        for i in range(self.num_layers - 1):
            self.blocks.append(
                (
                    keras.layers.Dense(self.hidden_dim, use_bias=False, name=f"dense{i}", dtype=self.dtype_policy),
                    keras.layers.BatchNormalization(name=f"bn{i}", dtype=self.dtype_policy),
                )
            )
        self.out = keras.layers.Dense(self.output_dim, name="out", dtype=self.dtype_policy)
        self.out_bn = (
            keras.layers.BatchNormalization(scale=False, center=False, name="out_bn", dtype=self.dtype_policy)
            if self.last_batch_norm
            else None
        )

    def build(self, input_shape):
        shape = tuple(input_shape)
        for dense, bn in self.blocks:
            dense.build(shape)
            shape = shape[:-1] + (self.hidden_dim,)
            bn.build(shape)
        self.out.build(shape)
        if self.out_bn is not None:
            self.out_bn.build(shape[:-1] + (self.output_dim,))

    def call(self, x, training=False):
        for dense, bn in self.blocks:
            x = keras.ops.relu(bn(dense(x), training=training))
        x = self.out(x)
        if self.out_bn is not None:
            x = self.out_bn(x, training=training)
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.output_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_dim=self.hidden_dim,
            output_dim=self.output_dim,
            num_layers=self.num_layers,
            last_batch_norm=self.last_batch_norm,
        )
        return config


@keras.saving.register_keras_serializable(package="kerasssl")
class PredictionHead(ProjectionHead):
    """The BYOL/SimSiam predictor: Dense -> BatchNorm -> ReLU -> Dense (a bottleneck MLP).

    Args:
        hidden_dim: bottleneck width (SimSiam uses output_dim / 4).
        output_dim: must equal the projection size it predicts.
        **kwargs: base Layer arguments.

    Example:
        >>> PredictionHead(hidden_dim=64, output_dim=256)(np.zeros((4, 256))).shape
        (4, 256)
    """

    def __init__(self, hidden_dim=512, output_dim=128, **kwargs):
        kwargs.pop("num_layers", None)
        kwargs.pop("last_batch_norm", None)
        super().__init__(hidden_dim=hidden_dim, output_dim=output_dim, num_layers=2, last_batch_norm=False, **kwargs)
