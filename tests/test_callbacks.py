"""kerasssl.callbacks: the fine-tuning callback BestValAUC (the pretraining ones: test_pretrain.py)."""

import keras
import numpy as np

from kerasssl.callbacks import BestValAUC


def test_best_val_auc_restores_the_best_epoch_and_checks_every_k():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 2.0]], np.float32)
    y = np.array([0, 1, 0, 1])
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="softmax", use_bias=False)])
    good = [np.eye(2, dtype=np.float32)]
    bad = [np.eye(2, dtype=np.float32)[::-1].copy()]
    cb = BestValAUC(x, y, patience=None)
    cb.set_model(model)
    cb.set_params({"epochs": 3})
    for epoch, weights in enumerate([bad, good, bad]):
        model.set_weights(weights)
        cb.on_epoch_end(epoch)
    cb.on_train_end()
    assert cb.history == [0.0, 1.0, 0.0] and cb.best_epoch == 1
    np.testing.assert_array_equal(model.get_weights()[0], good[0])
    sparse = BestValAUC(x, y, every=2)
    sparse.set_model(model)
    sparse.set_params({"epochs": 3})
    for epoch in range(3):
        sparse.on_epoch_end(epoch)
    assert sparse.epochs_checked == [2, 3]  # every 2nd epoch and the last
