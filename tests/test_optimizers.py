"""kerasssl.optimizers: ScaledAdamW's per-variable learning rates against NumPy Adam."""

import keras
import numpy as np
import pytest

from kerasssl.optimizers import ScaledAdamW


def test_scaled_adamw_first_step_matches_numpy_adam():
    # One Adam step moves each weight by lr * m_hat / (sqrt(v_hat) + eps) = lr * g / (|g| + eps).
    a = keras.Variable(np.ones((2, 2), np.float32))
    b = keras.Variable(np.ones((3,), np.float32))
    grads = [np.full((2, 2), 0.5, np.float32), np.full((3,), -2.0, np.float32)]
    opt = ScaledAdamW(0.01, lr_multipliers=[0.1, 1.0], weight_decay=0.5, epsilon=1e-7)
    opt.apply(grads, [a, b])
    step_a = 0.01 * 0.1 * 0.5 / (0.5 + 1e-7)
    decay_a = 0.01 * 0.1 * 0.5 * 1.0  # decoupled decay on the kernel (rank 2) only
    np.testing.assert_allclose(np.array(a), 1.0 - decay_a - step_a, rtol=1e-5)
    np.testing.assert_allclose(np.array(b), 1.0 + 0.01, rtol=1e-5)  # no decay on rank 1
    restored = ScaledAdamW.from_config(opt.get_config())
    assert restored.lr_multipliers == [0.1, 1.0] and restored.decoupled_weight_decay == 0.5


def test_scaled_adamw_checks_the_multiplier_count():
    opt = ScaledAdamW(0.01, lr_multipliers=[1.0])
    with pytest.raises(ValueError):
        opt.build([keras.Variable(np.ones(2)), keras.Variable(np.ones(2))])
