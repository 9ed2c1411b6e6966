"""Learning-rate schedules: linear warm-up then cosine decay.

Example:
    >>> lr = WarmupCosine(1e-3, warmup_steps=100, total_steps=1000)
    >>> optimizer = keras.optimizers.AdamW(learning_rate=lr)
"""

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kerasssl")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """lr(step) = base * step / warmup for step < warmup, then cosine to ``base * final_fraction``.

    Steps past ``total_steps`` stay at the final value (so raising ``--epochs`` on
    resume rebuilds the schedule with the new total, see ``kerasssl.pretrain``).

    Args:
        base_learning_rate: peak learning rate, reached at the end of warm-up.
        warmup_steps: linear warm-up length in optimizer steps (0 = none).
        total_steps: steps until the end of the cosine.
        final_fraction: final learning rate as a fraction of the peak.

    Example:
        >>> s = WarmupCosine(0.1, warmup_steps=10, total_steps=110)
        >>> float(s(5)), float(s(10)), float(s(110))
        (0.05, 0.1, 0.0)
    """

    def __init__(self, base_learning_rate, warmup_steps, total_steps, final_fraction=0.0, name="warmup_cosine"):
        self.base_learning_rate = float(base_learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = max(int(total_steps), self.warmup_steps + 1)
        self.final_fraction = float(final_fraction)
        self.name = name

    def __call__(self, step):
        step = ops.cast(step, "float32")
        base = self.base_learning_rate
        warm = float(max(self.warmup_steps, 1))
        warmup_lr = base * (step + 0.0) / warm
        decay_steps = float(self.total_steps - self.warmup_steps)
        progress = ops.clip((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = 0.5 * (1.0 + ops.cos(math.pi * progress))
        final = base * self.final_fraction
        cosine_lr = final + (base - final) * cosine
        if self.warmup_steps == 0:
            return cosine_lr
        return ops.where(step < self.warmup_steps, warmup_lr, cosine_lr)

    def get_config(self):
        return {
            "base_learning_rate": self.base_learning_rate,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "final_fraction": self.final_fraction,
            "name": self.name,
        }


def cosine_increase(step, total_steps, base_value):
    """BYOL's target momentum: base -> 1 along a half cosine, as keras.ops.

    tau(k) = 1 - (1 - base) * (cos(pi * k / K) + 1) / 2, clipped at k = K.

    Args:
        step: current step (tensor or number).
        total_steps: K.
        base_value: tau at step 0.

    Example:
        >>> float(cosine_increase(0, 100, 0.99)), float(cosine_increase(100, 100, 0.99))
        (0.99, 1.0)
    """
    progress = ops.clip(ops.cast(step, "float32") / float(max(int(total_steps), 1)), 0.0, 1.0)
    return 1.0 - (1.0 - base_value) * (ops.cos(math.pi * progress) + 1.0) / 2.0
