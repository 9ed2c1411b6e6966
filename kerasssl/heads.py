"""MLP heads on top of the encoder: projection (all methods), prediction (BYOL,
SimSiam, MoCo v3) and DINO's prototype head.

Example:
    >>> proj = ProjectionHead(hidden_dim=512, output_dim=128, num_layers=2)
    >>> pred = PredictionHead(hidden_dim=128, output_dim=128)
    >>> pred(proj(features)).shape
    (N, 128)
    >>> DINOHead(hidden_dim=512, bottleneck_dim=256, output_dim=4096)(features).shape
    (N, 4096)
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
    """The BYOL/SimSiam predictor: [Dense -> BatchNorm -> ReLU] x (num_layers - 1) -> Dense.

    A bottleneck MLP (two layers in BYOL, SimSiam and MoCo v3) with no
    BatchNorm on its output: it predicts the other view's projection.

    Args:
        hidden_dim: bottleneck width (SimSiam uses output_dim / 4).
        output_dim: must equal the projection size it predicts.
        num_layers: total Dense layers (>= 1; 2 in the papers).
        **kwargs: base Layer arguments. ``last_batch_norm`` is refused unless
            False (what ``get_config`` records): a predictor has none.

    Example:
        >>> PredictionHead(hidden_dim=64, output_dim=256)(np.zeros((4, 256))).shape
        (4, 256)
    """

    def __init__(self, hidden_dim=512, output_dim=128, num_layers=2, **kwargs):
        if kwargs.pop("last_batch_norm", False):
            raise ValueError("PredictionHead has no output BatchNorm: last_batch_norm must be False")
        super().__init__(hidden_dim=hidden_dim, output_dim=output_dim, num_layers=num_layers,
                         last_batch_norm=False, **kwargs)


@keras.saving.register_keras_serializable(package="kerasssl")
class DINOHead(keras.layers.Layer):
    """DINO's head: MLP -> L2-normalised bottleneck -> weight-normalised prototypes.

    ``(num_layers - 1) x [Dense (-> BatchNorm) -> GELU]`` then a Dense to
    ``bottleneck_dim``; the bottleneck is L2-normalised and scored against
    ``output_dim`` prototypes by a bias-free linear layer whose columns are
    L2-normalised (weight normalisation, ``w = g v / ||v||``). With
    ``norm_last_layer`` (DINO's default) the gain ``g`` is fixed at 1, so the
    logits are cosine similarities in [-1, 1]. Normalisations run in float32.

    Args:
        hidden_dim: MLP width (2048 in DINO).
        bottleneck_dim: bottleneck size (256 in DINO).
        output_dim: number of prototypes K (65536 in DINO; a few thousand
            suit small data sets).
        num_layers: Dense layers before the prototypes (>= 1; 3 in DINO).
        use_batch_norm: BatchNorm after each hidden Dense (off in DINO for ViTs).
        norm_last_layer: fix the prototype gain at 1 (else a trainable gain).
        **kwargs: base Layer arguments (name, dtype).

    Example:
        >>> head = DINOHead(hidden_dim=64, bottleneck_dim=16, output_dim=128)
        >>> head(np.zeros((4, 32))).shape
        (4, 128)
    """

    def __init__(self, hidden_dim=2048, bottleneck_dim=256, output_dim=4096, num_layers=3,
                 use_batch_norm=False, norm_last_layer=True, **kwargs):
        super().__init__(**kwargs)
        if num_layers < 1:
            raise ValueError("num_layers must be >= 1")
        self.hidden_dim = int(hidden_dim)
        self.bottleneck_dim = int(bottleneck_dim)
        self.output_dim = int(output_dim)
        self.num_layers = int(num_layers)
        self.use_batch_norm = bool(use_batch_norm)
        self.norm_last_layer = bool(norm_last_layer)
        self.blocks = []
        for i in range(self.num_layers - 1):
            bn = (keras.layers.BatchNormalization(name=f"bn{i}", dtype=self.dtype_policy)
                  if self.use_batch_norm else None)
            self.blocks.append((keras.layers.Dense(self.hidden_dim, name=f"dense{i}", dtype=self.dtype_policy), bn))
        self.bottleneck = keras.layers.Dense(self.bottleneck_dim, name="bottleneck", dtype=self.dtype_policy)

    def build(self, input_shape):
        shape = tuple(input_shape)
        for dense, bn in self.blocks:
            dense.build(shape)
            shape = shape[:-1] + (self.hidden_dim,)
            if bn is not None:
                bn.build(shape)
        self.bottleneck.build(shape)
        # DINO initialises the prototypes like a linear layer (truncated normal, std 0.02).
        self.prototypes = self.add_weight(
            shape=(self.bottleneck_dim, self.output_dim), name="prototypes",
            initializer=keras.initializers.TruncatedNormal(stddev=0.02), autocast=False)
        self.gain = None
        if not self.norm_last_layer:
            self.gain = self.add_weight(shape=(self.output_dim,), name="gain", initializer="ones", autocast=False)
        self.built = True

    def embed(self, x, training=False):
        """Features -> the L2-normalised bottleneck (N, bottleneck_dim), float32."""
        for dense, bn in self.blocks:
            x = dense(x)
            if bn is not None:
                x = bn(x, training=training)
            x = keras.ops.gelu(x, approximate=False)
        x = keras.ops.cast(self.bottleneck(x), "float32")
        return x / keras.ops.maximum(keras.ops.norm(x, axis=-1, keepdims=True), 1e-12)

    def score(self, embedding):
        """Normalised bottleneck -> prototype logits (N, output_dim), float32."""
        v = keras.ops.cast(self.prototypes, "float32")
        w = v / keras.ops.maximum(keras.ops.norm(v, axis=0, keepdims=True), 1e-12)
        if self.gain is not None:
            w = w * keras.ops.cast(self.gain, "float32")
        return keras.ops.matmul(keras.ops.cast(embedding, "float32"), w)

    def call(self, x, training=False):
        return self.score(self.embed(x, training=training))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.output_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_dim=self.hidden_dim,
            bottleneck_dim=self.bottleneck_dim,
            output_dim=self.output_dim,
            num_layers=self.num_layers,
            use_batch_norm=self.use_batch_norm,
            norm_last_layer=self.norm_last_layer,
        )
        return config
