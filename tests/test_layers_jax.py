"""The augmentation layers on the JAX backend (a child process with KERAS_BACKEND=jax)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent("""
    import json
    import numpy as np
    import keras
    import kerasssl.layers as L
    from kerasssl.layers.views import build_view_pair

    assert keras.backend.backend() == "jax"
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 50.0, size=(4, 12, 12, 2)).astype("float32")
    x[:, 6, 6] = 3000.0
    layers = {
        "rotation": lambda s: L.RandomRotation(0.2, seed=s),
        "crop": lambda s: L.RandomResizedCrop((0.5, 1.0), seed=s),
        "rotatedcrop": lambda s: L.RandomRotatedCrop({"factor": 0.2}, {"scale": (0.5, 1.0)},
                                                     dihedral={}, seed=s),
        "flip": lambda s: L.RandomFlip(seed=s),
        "rot90": lambda s: L.RandomRot90(seed=s),
        "dihedral": lambda s: L.RandomDihedral(seed=s),
        "blur": lambda s: L.RandomGaussianBlur((0.5, 1.5), seed=s),
        "noise": lambda s: L.RandomGaussianNoise((0.5, 1.0), relative=True, seed=s),
        "shift": lambda s: L.RandomShift(2, seed=s),
        "psf": lambda s: L.PSFMatchBlur([1.5, 2.0], [[2.0, 3.5], [2.5, 4.0]], seed=s),
        "skynoise": lambda s: L.SkyNoiseMatch((60.0, 90.0), seed=s),
        "reddening": lambda s: L.RandomReddening((0.0, 0.3), coefficients=[3.214, 2.165],
                                                 seed=s),
    }
    result = {}
    for name, make in layers.items():
        layer = make(1)
        out = np.asarray(layer(x, training=True))
        result[name] = {
            "finite": bool(np.isfinite(out).all()),
            "changed": not np.allclose(out, x),
            "identity_off": bool(np.array_equal(np.asarray(layer(x, training=False)), x)),
            "seeded": bool(np.array_equal(np.asarray(make(1)(x, training=True)), out)),
            "negative_and_bright": bool(out.min() < 0 and out.max() > 255),
        }
    rot = np.asarray(L.RandomRotation((0.25, 0.25), seed=0)(x, training=True))
    result["rot90_error"] = float(np.abs(rot - np.rot90(x, 1, axes=(1, 2))).max())

    # Inside a jitted JAX train step: the seed generators' states are threaded
    # through the stateless trainer, so two steps draw different augmentations.
    view1, view2 = build_view_pair("asymmetric", seed=0, name="byol")  # BYOL's views
    inputs = keras.Input((12, 12, 2))
    h = view1(inputs)
    h = keras.layers.Conv2D(2, 3)(h)
    outputs = keras.layers.Dense(1)(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="mse")
    states = []
    for _ in range(2):
        loss = model.train_on_batch(x, np.zeros((4, 1), "float32"))
        states.append([np.asarray(v.value).tolist() for v in model.non_trainable_variables])
    result["train_loss_finite"] = bool(np.isfinite(loss))
    result["seed_state_advances"] = states[0] != states[1]
    result["predict_finite"] = bool(np.isfinite(model.predict(x, verbose=0)).all())

    # The physical views inside a jitted train step too.
    inputs = keras.Input((12, 12, 2))
    h = inputs
    for name in ("shift", "psf", "skynoise", "reddening"):
        h = layers[name](2)(h)
    h = keras.layers.Conv2D(2, 3)(h)
    physical = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.GlobalAveragePooling2D()(h)))
    physical.compile(optimizer="sgd", loss="mse")
    losses = [float(physical.train_on_batch(x, np.zeros((4, 1), "float32"))) for _ in range(2)]
    result["physical_train_finite"] = bool(np.isfinite(losses).all())
    print("RESULT " + json.dumps(result))
""")


@pytest.mark.jax
def test_layers_run_on_jax_backend():
    pytest.importorskip("jax")
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    for name in ("rotation", "crop", "flip", "rot90", "dihedral", "blur", "noise", "shift",
                 "psf", "skynoise", "reddening"):
        assert result[name] == {"finite": True, "changed": True, "identity_off": True,
                                "seeded": True, "negative_and_bright": True}, name
    assert result["rot90_error"] < 1e-2
    assert result["train_loss_finite"] and result["predict_finite"]
    assert result["physical_train_finite"]
    assert result["seed_state_advances"]
