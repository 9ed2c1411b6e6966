"""MoCo and DINO state: the queue and the centre are read by the loss *before* the
step updates them (eager, TF graph and JAX), the queue is a ring buffer, and queue,
pointer and centre survive checkpoints and .keras saving; both run through pretrain()."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from kerasssl import losses, methods
from kerasssl.checkpoints import EpochCheckpoint, restore_checkpoint
from kerasssl.config import RunConfig
from kerasssl.encoders import build_encoder

SMALL = dict(projection_dim=8, hidden_dim=16, total_steps=10)


def _model(name, seed=0, **options):
    keras.utils.set_random_seed(seed)
    # Identity views: every call on the same pixels gives the same outputs.
    return methods.get(name)(build_encoder("tiny", (16, 16, 1)), **dict(SMALL, **options))


def _images(n=8, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 16, 16, 1)).astype("float32")


def _unit(a):
    a = np.asarray(a, np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _own_state(model):
    """The method's own variables (queue, pointer, centre, step), by name."""
    return {v.name: v.numpy().copy() for v in model.variables if v.path == f"{model.name}/{v.name}"}


def _first_fit_loss(model, x):
    model.compile(optimizer=keras.optimizers.SGD(0.1), run_eagerly=False)  # the TF graph step
    return model.fit(x, batch_size=len(x), epochs=1, shuffle=False, verbose=0).history["loss"][0]


def test_moco_loss_uses_old_queue_then_enqueues_with_wrap_around():
    model = _model("moco", queue_size=20)
    initial = model.get_weights()
    queue0 = model.queue.numpy().copy()
    np.testing.assert_allclose(np.linalg.norm(queue0, axis=1), 1.0, rtol=1e-5)  # random unit keys
    x1, x2 = _images(seed=1), _images(seed=2)

    out = model(x1, training=True)
    np.testing.assert_array_equal(out["queue"].numpy(), queue0)
    keys1 = _unit(np.concatenate([out["k1"], out["k2"]]))  # 16 keys: rows 0..15
    queue1 = model.queue.numpy()
    np.testing.assert_allclose(queue1[:16], keys1, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(queue1[16:], queue0[16:])
    assert int(model.queue_pointer.numpy()) == 16
    old_loss = float(model.compute_loss(x1, None, out, None))
    new_loss = float(losses.moco_loss(out["z1"], out["z2"], out["k1"], out["k2"], queue1, model.temperature))
    assert abs(old_loss - new_loss) > 1e-3

    # Wrap-around: the next 16 keys fill rows 16..19 then 0..11.
    out2 = model(x2, training=True)
    np.testing.assert_allclose(out2["queue"].numpy(), queue1)
    keys2 = _unit(np.concatenate([out2["k1"], out2["k2"]]))
    queue2 = model.queue.numpy()
    np.testing.assert_allclose(queue2[16:], keys2[:4], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(queue2[:12], keys2[4:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(queue2[12:16], keys1[12:16], rtol=1e-5, atol=1e-6)
    assert int(model.queue_pointer.numpy()) == 12

    # The compiled TF step: same old-queue loss and the same enqueue.
    model.set_weights(initial)
    assert float(_first_fit_loss(model, x1)) == pytest.approx(old_loss, rel=1e-4)
    np.testing.assert_allclose(model.queue.numpy(), queue1, rtol=1e-5, atol=1e-6)
    assert int(model.queue_pointer.numpy()) == 16


def test_moco_batch_larger_than_queue_keeps_the_last_keys():
    model = _model("moco", queue_size=12)
    out = model(_images(), training=True)
    keys = _unit(np.concatenate([out["k1"], out["k2"]]))  # 16 keys for 12 slots
    queue = model.queue.numpy()
    # A ring buffer written in order: key i lands in slot i % 12, the last write wins.
    np.testing.assert_allclose(queue[4:12], keys[4:12], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(queue[:4], keys[12:16], rtol=1e-5, atol=1e-6)
    assert int(model.queue_pointer.numpy()) == 16 % 12


def test_moco_v3_has_no_queue_and_trains_with_its_loss():
    model = _model("moco", version=3)
    assert not hasattr(model, "queue") and hasattr(model, "predictor")
    x = _images(16)
    out = model(x, training=False)
    expected = losses.moco_v3_loss(out["p1"], out["p2"], out["k1"], out["k2"], model.temperature)
    np.testing.assert_allclose(float(model.compute_loss(x, None, out, None)), float(expected), rtol=1e-5)
    before = [w.numpy().copy() for w in model.predictor.trainable_weights]
    model.compile(optimizer=keras.optimizers.SGD(0.1), run_eagerly=True)
    assert np.isfinite(model.fit(x, batch_size=8, epochs=1, verbose=0).history["loss"][0])
    assert max(np.abs(a - w.numpy()).max() for a, w in zip(before, model.predictor.trainable_weights)) > 0
    with pytest.raises(ValueError, match="version"):
        _model("moco", version=1)


def test_dino_loss_uses_old_centre_then_updates_it():
    model = _model("dino", output_dim=32, center_momentum=0.9)
    initial = model.get_weights()
    x = _images(seed=3)
    out = model(x, training=True)
    np.testing.assert_array_equal(out["center"].numpy(), np.zeros(32, np.float32))
    teacher_mean = np.concatenate([out["t1"], out["t2"]]).mean(axis=0)
    assert np.abs(teacher_mean).max() > 1e-4
    np.testing.assert_allclose(model.center.numpy(), 0.1 * teacher_mean, rtol=1e-5, atol=1e-7)
    old_loss = float(model.compute_loss(x, None, out, None))
    new_loss = float(losses.dino_loss([out["s1"], out["s2"]], [out["t1"], out["t2"]], model.center.numpy(),
                                      model.student_temperature, model.teacher_temperature))
    assert abs(old_loss - new_loss) > 1e-4

    model.set_weights(initial)
    assert float(_first_fit_loss(model, x)) == pytest.approx(old_loss, rel=1e-4)
    np.testing.assert_allclose(model.center.numpy(), 0.1 * teacher_mean, rtol=1e-4, atol=1e-6)


def test_dino_teacher_temperature_warm_up_and_multi_crop():
    model = _model("dino", output_dim=32, teacher_temperature=0.07, warmup_teacher_temperature=0.04,
                   warmup_teacher_fraction=0.5, local_crops=2)  # total_steps 10: warm-up over 5 steps
    temps = [float(model.teacher_temperature_at(s)) for s in (0, 5, 9)]
    np.testing.assert_allclose(temps, [0.04, 0.07, 0.07], rtol=1e-6)
    assert float(model.teacher_temperature_at(2)) == pytest.approx(0.04 + 0.03 * 2 / 5)
    x = _images(seed=4)
    out = model(x, training=True)
    assert float(out["teacher_temperature"]) == pytest.approx(0.04)  # step 0's, read before the step
    assert sorted(k for k in out if k.startswith("s")) == ["s1", "s2", "s3", "s4"]  # 2 global + 2 local
    expected = losses.dino_loss([out[f"s{i}"] for i in range(1, 5)], [out["t1"], out["t2"]], out["center"],
                                0.1, 0.04)
    np.testing.assert_allclose(float(model.compute_loss(x, None, out, None)), float(expected), rtol=1e-5)
    assert float(model(x, training=True)["teacher_temperature"]) == pytest.approx(0.04 + 0.03 / 5)
    # Inference: the two global views only.
    assert "s3" not in model(x, training=False)
    trainable = {id(v) for v in model.trainable_variables}
    assert not any(id(v) in trainable for v in model.target_encoder.weights + model.target_head.weights)


@pytest.mark.parametrize("name", ["moco", "dino"])
def test_queue_pointer_and_centre_survive_checkpoint_and_keras_save(name, tmp_path):
    options = {"moco": dict(queue_size=24), "dino": dict(output_dim=32)}[name]
    model = _model(name, **options)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    model.fit(_images(16), batch_size=8, epochs=1, verbose=0,
              callbacks=[EpochCheckpoint(tmp_path / "ckpt")])
    state = _own_state(model)
    assert sorted(state) == {"moco": ["ema_step", "queue", "queue_pointer"], "dino": ["center", "ema_step"]}[name]
    assert float(state["ema_step"]) == 2.0
    if name == "moco":
        assert int(state["queue_pointer"]) == 32 % 24
    else:
        assert np.abs(state["center"]).max() > 0

    fresh = _model(name, seed=1, **options)  # another seed: another random queue, a zero centre
    fresh.compile(optimizer=keras.optimizers.SGD(0.1))
    assert all(not np.array_equal(value, state[key]) for key, value in _own_state(fresh).items())
    restore_checkpoint(fresh, tmp_path / "ckpt")
    for key, value in _own_state(fresh).items():
        np.testing.assert_array_equal(value, state[key])

    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model)
    options = {k: v for k, v in model.get_config().items() if k not in ("encoder", "preprocess", "view1", "view2")}
    assert {k: loaded.get_config()[k] for k in options} == options
    assert "queue_size" in options or "center_momentum" in options
    for key, value in _own_state(loaded).items():
        np.testing.assert_array_equal(value, state[key])
    x = _images(seed=5)
    np.testing.assert_allclose(loaded(x)["z1"], model(x)["z1"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["moco", "dino"])
def test_mixed_float16_step_keeps_queue_and_centre_float32(name):
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        model = _model(name, queue_size=24) if name == "moco" else _model(name, output_dim=32)
        model.compile(optimizer=keras.optimizers.SGD(0.1), run_eagerly=True)
        assert model.encoder(_images()).dtype == "float16"
        loss = model.fit(_images(16), batch_size=8, epochs=1, verbose=0).history["loss"][0]
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert np.isfinite(loss)
    state = _own_state(model)
    for key in ("queue", "center"):
        if key in state:
            assert state[key].dtype == np.float32 and np.all(np.isfinite(state[key]))
    if name == "moco":
        np.testing.assert_allclose(np.linalg.norm(state["queue"], axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", ["moco", "dino"])
def test_pretrain_library_runs_moco_and_dino_with_default_options(name, three_band_folder, tmp_path):
    from kerasssl.pretrain import pretrain

    cfg = RunConfig.from_dict({"seed": 0, "data": {"image_size": 32},
                               "pretrain": {"method": name, "encoder": "tiny", "epochs": 1,
                                            "batch_size": 8, "steps_per_epoch": 3}})
    history = pretrain(cfg, three_band_folder, tmp_path / "run", verbose=0)
    assert len(history["loss"]) == 1 and np.isfinite(history["loss"][0])
    assert (tmp_path / "run" / "encoder.keras").exists()
    meta = json.loads((tmp_path / "run" / "checkpoints" / "latest.json").read_text())
    assert meta["epoch"] == 1


@pytest.mark.jax
@pytest.mark.slow  # JAX compilation of two models on 2 cores
def test_moco_and_dino_on_jax_backend_read_old_state():
    code = textwrap.dedent(
        """
        import numpy as np, keras
        from kerasssl import losses, methods
        from kerasssl.encoders import build_encoder
        x = np.random.default_rng(0).normal(size=(8, 16, 16, 1)).astype("float32")
        for name, opts in (("moco", dict(queue_size=20)), ("dino", dict(output_dim=32))):
            keras.utils.set_random_seed(0)
            m = methods.get(name)(build_encoder("tiny", (16, 16, 1)), projection_dim=8, hidden_dim=16,
                                  total_steps=10, **opts)
            initial = m.get_weights()
            out = m(x, training=True)
            old = float(m.compute_loss(x, None, out, None))
            state = "queue" if name == "moco" else "center"
            after_eager = getattr(m, state).numpy().copy()
            m.set_weights(initial)
            m.compile(optimizer=keras.optimizers.SGD(0.1))
            fit_loss = m.fit(x, batch_size=8, epochs=1, shuffle=False, verbose=0).history["loss"][0]
            assert abs(fit_loss - old) < 1e-4 * abs(old), (name, fit_loss, old)
            np.testing.assert_allclose(getattr(m, state).numpy(), after_eager, rtol=1e-4, atol=1e-6)
            if name == "moco":
                assert int(m.queue_pointer.numpy()) == 16
        print("JAX-OK")
        """
    )
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "JAX-OK" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.parametrize("name, options, batch_stats", [("moco", {}, False), ("moco", {"version": 3}, True),
                                                        ("dino", {"output_dim": 32}, True)])
def test_target_batchnorm_statistics(name, options, batch_stats):
    # MoCo v2's keys use the moving averages (no leak between the batch's
    # positive and the queued negatives); v3's keys and DINO's teacher use the
    # batch's statistics, as their online twins do, with no BatchNorm variable
    # left to the optimizer.
    model = _model(name, queue_size=16, **options) if name == "moco" else _model(name, **options)
    target = model.target_encoder
    initial = model.get_weights()
    trainable = {id(v) for v in model.trainable_variables}
    assert not any(id(v) in trainable for v in model.non_trainable_variables)
    assert not any(id(v) in trainable for v in target.weights)
    x = np.concatenate([_images(seed=6)] * 2)  # identity views: the step encodes [x, x]
    online = model.encoder(x, training=True).numpy()  # == target weights at step 0
    batch = target(x, training=True).numpy()
    moving = target(x, training=False).numpy()
    assert np.abs(online - moving).max() > 1e-3
    np.testing.assert_allclose(batch, online if batch_stats else moving, rtol=1e-5, atol=1e-6)
    # The training step sees the same thing (from the initial state: the calls
    # above in training mode moved the moving averages, which the EMA copies).
    model.set_weights(initial)
    out = model(x[:8], training=True)
    key_head = model.target_head if name == "dino" else model.target_projector
    expected = key_head(online if batch_stats else moving, training=batch_stats).numpy()[:8]
    got = out["t1"] if name == "dino" else out["k1"]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
