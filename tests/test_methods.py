"""Methods: the shared step trains every method, losses are the pure functions,
mixed precision scales the loss, BYOL's target follows the online net by EMA."""

import inspect
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerasssl import losses, methods
from kerasssl.encoders import build_encoder
from kerasssl.errors import KerassslError


def _data(n=32, size=16):
    return np.random.default_rng(0).normal(size=(n, size, size, 1)).astype("float32")


def _make(name, **options):
    keras.utils.set_random_seed(0)
    enc = build_encoder("tiny", (16, 16, 1))
    noise = [keras.layers.GaussianNoise(0.2, seed=i) for i in (1, 2)]
    small = dict(projection_dim=16, hidden_dim=32)
    small.update(options)
    return methods.get(name)(enc, None, noise[0], noise[1], **small)


REFERENCE = {
    "simclr": lambda o, m: losses.nt_xent(o["z1"], o["z2"], m.temperature),
    "simsiam": lambda o, m: losses.simsiam_loss(o["p1"], o["p2"], o["z1"], o["z2"]),
    "byol": lambda o, m: losses.byol_loss(o["p1"], o["p2"], o["t1"], o["t2"]),
    "barlow_twins": lambda o, m: losses.barlow_twins(o["z1"], o["z2"], m.lambda_offdiag),
    "vicreg": lambda o, m: losses.vicreg(o["z1"], o["z2"], m.sim_weight, m.var_weight, m.cov_weight),
    "moco": lambda o, m: losses.moco_loss(o["z1"], o["z2"], o["k1"], o["k2"], o["queue"], m.temperature),
    "dino": lambda o, m: losses.dino_loss([o["s1"], o["s2"]], [o["t1"], o["t2"]], o["center"],
                                          m.student_temperature, m.teacher_temperature),
}


def test_registry():
    # Every registered method needs its loss reference here (a new method file is found by itself).
    missing = sorted(set(methods.available()) - set(REFERENCE))
    assert not missing, f"add a REFERENCE loss for {missing}"
    assert methods.available() == sorted(REFERENCE)
    assert methods.get("Barlow-Twins") is methods.BarlowTwins
    assert methods.get("MoCo") is methods.MoCo and methods.get("dino") is methods.DINO
    with pytest.raises(KerassslError, match="unknown method"):
        methods.get("no_such_method")


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_method_trains_and_uses_its_loss(name):
    model = _make(name)
    x = _data()
    out = model(x, training=False)
    loss = float(model.compute_loss(x, None, out, None, training=False))
    np.testing.assert_allclose(loss, float(REFERENCE[name](out, model)), rtol=1e-5)
    before = [w.numpy().copy() for w in model.encoder.trainable_weights]
    # Eager: two tiny steps cost less than tracing the step graph.
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), run_eagerly=True)
    hist = model.fit(x, batch_size=16, epochs=1, verbose=0).history
    assert np.all(np.isfinite(hist["loss"])) and len(hist["loss"]) == 1
    # Collapse monitor: between 0 and 1/sqrt(d)-ish, i.e. not collapsed at init.
    assert 0.01 < hist["embedding_std"][-1] <= 1.0
    moved = [np.abs(a - w.numpy()).max() for a, w in zip(before, model.encoder.trainable_weights)]
    assert max(moved) > 0
    config = model.get_config()
    assert config["projection_dim"] == 16 and all(k in config for k in ("encoder", "view1", "view2"))
    # Complete: every constructor argument is in the config.
    params = set(inspect.signature(type(model).__init__).parameters) - {"self", "kwargs"}
    assert params <= set(config), sorted(params - set(config))


def test_mixed_float16_scales_loss_and_bfloat16_does_not():
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    model = _make("simclr")
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), run_eagerly=True)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    # The scaled loss is what gets differentiated: scale_loss multiplies by the
    # dynamic scale (2**15 at the start), and training still gives a finite loss.
    assert float(model.optimizer.scale_loss(1.0)) == pytest.approx(2.0**15)
    x = _data()
    out = model(x, training=True)
    assert out["z1"].dtype == tf.float16
    assert model.compute_loss(x, None, out, None).dtype == tf.float32
    hist = model.fit(x, batch_size=16, epochs=1, verbose=0).history
    assert np.isfinite(hist["loss"][0])

    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    model = _make("simclr")
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), jit_compile=False)
    assert not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


def test_byol_target_is_ema_of_online_and_gets_no_gradient():
    model = _make("byol", base_momentum=0.9, total_steps=10)
    online, target = model.encoder, model.target_encoder
    trainable_ids = {id(v) for v in model.trainable_variables}
    assert not any(id(v) in trainable_ids for v in target.weights + model.target_projector.weights)
    for a, b in zip(online.get_weights(), target.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = _data(16)
    model.compile(optimizer=keras.optimizers.SGD(0.5), run_eagerly=True)
    model.fit(x, batch_size=16, epochs=1, verbose=0)  # step 0: target == online, EMA is a no-op
    online_1 = [w.numpy().copy() for w in online.weights]
    target_1 = [w.numpy().copy() for w in target.weights]
    assert any(np.abs(o - t).max() > 1e-6 for o, t in zip(online_1, target_1))
    tau = float(model.target_momentum())  # momentum used by the next step
    assert 0.9 < tau < 1.0
    model.fit(x, batch_size=16, epochs=1, verbose=0)
    for o, t, new in zip(online_1, target_1, target.weights):
        np.testing.assert_allclose(new.numpy(), tau * t + (1 - tau) * o, rtol=1e-4, atol=1e-6)
    # No gradient reaches the target network through the loss.
    target_vars = [v.value for v in target.weights + model.target_projector.weights]
    with tf.GradientTape() as tape:
        tape.watch(target_vars)
        out = model(x, training=False)
        loss = model.compute_loss(x, None, out, None, training=False)
    grads = tape.gradient(loss, target_vars)
    assert all(g is None for g in grads)


@pytest.mark.jax
@pytest.mark.slow  # ~40 s of JAX compilation on 2 cores
def test_byol_and_simclr_step_on_jax_backend():
    code = textwrap.dedent(
        """
        import numpy as np, keras
        from kerasssl import methods
        from kerasssl.encoders import build_encoder
        x = np.random.default_rng(0).normal(size=(16, 16, 16, 1)).astype("float32")
        for name in ("byol", "simclr"):
            enc = build_encoder("tiny", (16, 16, 1))
            m = methods.get(name)(enc, None, keras.layers.GaussianNoise(0.2), keras.layers.GaussianNoise(0.2),
                                  projection_dim=16, hidden_dim=32)
            m.compile(optimizer=keras.optimizers.SGD(0.5))
            before = [w.numpy().copy() for w in getattr(m, "target_encoder", enc).weights]
            h = m.fit(x, batch_size=8, epochs=1, verbose=0).history
            assert np.isfinite(h["loss"][0]), h
            after = [w.numpy() for w in getattr(m, "target_encoder", enc).weights]
            assert max(np.abs(a - b).max() for a, b in zip(before, after)) > 0, name
        print("JAX-OK")
        """
    )
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "JAX-OK" in proc.stdout, proc.stderr[-2000:]
