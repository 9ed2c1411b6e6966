"""Optimizers kerasssl trains with, beyond Keras's own.

- :class:`ScaledAdamW`: AdamW with a learning-rate factor per variable (full
  fine-tuning trains the encoder at a tenth of the head's rate).

Example:
    >>> opt = ScaledAdamW(1e-3, lr_multipliers=[0.1] * n_encoder + [1.0] * n_head, weight_decay=1e-4)
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kerasssl")
class ScaledAdamW(keras.optimizers.Adam):
    """AdamW whose learning rate is multiplied per variable (e.g. 0.1 for the encoder).

    Keras 3 optimizers have one learning rate; a lower encoder rate for full
    fine-tuning needs a per-variable factor. Scaling the *gradient* does not
    work with Adam (its update is invariant to gradient scale), so the factor
    multiplies the learning rate inside :meth:`update_step`, and the decoupled
    weight decay of that variable uses the same scaled rate.

    Args:
        learning_rate: float or ``LearningRateSchedule``.
        lr_multipliers: one factor per trainable variable, in the order of
            ``model.trainable_variables`` (the order the optimizer is built
            with); None means 1 for all.
        weight_decay: decoupled weight decay for kernels (rank >= 2); biases
            and normalisation parameters are not decayed.
        **kwargs: ``keras.optimizers.Adam`` arguments.

    Example:
        >>> encoder_ids = {id(v) for v in encoder.trainable_variables}
        >>> mult = [0.1 if id(v) in encoder_ids else 1.0 for v in model.trainable_variables]
        >>> model.compile(optimizer=ScaledAdamW(1e-3, lr_multipliers=mult), loss=...)
    """

    def __init__(self, learning_rate=1e-3, lr_multipliers=None, weight_decay=0.0, **kwargs):
        kwargs.pop("weight_decay", None)
        super().__init__(learning_rate=learning_rate, weight_decay=None, **kwargs)
        self.lr_multipliers = None if lr_multipliers is None else [float(m) for m in lr_multipliers]
        self.decoupled_weight_decay = float(weight_decay or 0.0)

    def build(self, variables):
        if self.lr_multipliers is not None and len(self.lr_multipliers) != len(variables):
            raise ValueError(
                f"ScaledAdamW got {len(self.lr_multipliers)} lr_multipliers for "
                f"{len(variables)} trainable variables"
            )
        super().build(variables)

    def update_step(self, gradient, variable, learning_rate):
        scale = 1.0
        if self.lr_multipliers is not None:
            scale = self.lr_multipliers[self._get_variable_index(variable)]
        learning_rate = ops.multiply(ops.cast(learning_rate, variable.dtype), scale)
        if self.decoupled_weight_decay and len(variable.shape) >= 2:
            self.assign_sub(
                variable, ops.multiply(variable, ops.multiply(learning_rate, self.decoupled_weight_decay))
            )
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config.update(lr_multipliers=self.lr_multipliers, weight_decay=self.decoupled_weight_decay)
        return config
