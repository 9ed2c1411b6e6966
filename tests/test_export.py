"""SavedModel export: TF Serving layout, atomic versions, deterministic signatures.

The classifiers here are tiny (16 px, one conv) but shaped like the real one:
Preprocess -> random augmentation (+ noise) -> encoder sub-model -> dropout -> softmax.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerasssl.errors import KerassslError
from kerasssl.export import METADATA_FILE, export_model, export_saved_model, read_metadata
from kerasssl.layers import Preprocess, RandomDihedral

SIZE = 16


def make_classifier(size=SIZE, channels=1, n_classes=2, normalization="asinh", encoder_name="encoder", seed=0):
    """Preprocess -> RandomDihedral + GaussianNoise -> encoder -> Dropout -> softmax.

    The augmentation, noise and dropout make training-mode calls random, so a
    deterministic export is something a test can fail on.
    """
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, channels), name="image")
    x = Preprocess(nan_policy="median", normalization=normalization)(inputs)
    x = RandomDihedral(seed=seed)(x)
    x = keras.layers.GaussianNoise(0.5, seed=seed)(x)
    enc_in = keras.Input((size, size, channels))
    y = keras.layers.Conv2D(6, 3, activation="relu")(enc_in)
    y = keras.layers.GlobalAveragePooling2D()(y)
    encoder = keras.Model(enc_in, y, name=encoder_name)
    x = encoder(x)
    x = keras.layers.Dropout(0.5, seed=seed)(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name="classifier")


def raw_images(n, size=SIZE, channels=1, seed=0, nan=True):
    """Raw-count-like images (negative sky, bright centre); NaN pixels in every other one."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    galaxy = 60.0 * np.exp(-np.hypot(xx, yy) / 3.0)
    x = galaxy[None, ..., None] * rng.uniform(0.2, 2.0, (n, 1, 1, channels)) + rng.normal(0, 3, (n, size, size, channels))
    x = x.astype(np.float32)
    if nan:
        for i in range(0, n, 2):
            x[i].flat[rng.choice(x[i].size, 4, replace=False)] = np.nan
    return x
_SHARED = {}


def shared_export(tmp_path_factory):
    """One classifier saved in a run dir and exported once per test session (+ fp32 TFLite).

    Returns (model, run_dir, version_dir); test_predict, test_tflite and
    test_serving_contract use it too, so the slow export runs once.
    """
    if "export" not in _SHARED:
        root = tmp_path_factory.mktemp("shared_export")
        run = root / "run"
        run.mkdir()
        model = make_classifier()
        model.save(run / "classifier.keras")
        (run / "runs.jsonl").write_text(json.dumps({"time": "2026-11-27T21:00:00+0000", "argv": []}) + "\n")
        (run / "finetune.json").write_text(json.dumps({"class_names": ["nonlenses", "lenses"]}))
        result = export_model(run / "classifier.keras", root / "saved_models", "lens_finder", tflite="fp32")
        _SHARED["export"] = (model, run, result.path)
        _SHARED["export_result"] = result
    return _SHARED["export"]


@pytest.fixture
def exported(tmp_path_factory):
    model, _, path = shared_export(tmp_path_factory)
    return model, path


def test_layout_and_metadata(exported):
    model, path = exported
    assert path.name == "1" and path.parent.name == "lens_finder"
    assert (path / "saved_model.pb").is_file() and (path / "variables").is_dir()
    # nothing but the version is left in the model folder (no temp dir)
    assert sorted(p.name for p in path.parent.iterdir()) == ["1"]
    meta = json.loads((path / "assets" / METADATA_FILE).read_text())
    assert meta["class_names"] == ["nonlenses", "lenses"]  # from RUN/finetune.json
    assert meta["input"]["shape"] == [None, SIZE, SIZE, 1] and meta["input"]["layout"] == "NHWC"
    assert meta["input"]["dtype"] == "float32"
    pre = [l for l in model.layers if isinstance(l, Preprocess)][0]
    assert meta["normalization"] == json.loads(json.dumps(pre.get_config()))
    assert meta["versions"]["tensorflow"] == tf.__version__ and meta["versions"]["keras"] == keras.__version__
    assert meta["training_run_id"] == "run@2026-11-27T21:00:00+0000"  # from RUN/runs.jsonl
    assert meta["signatures"][:2] == ["serving_default", "embed"]


def test_serving_default_is_deterministic_and_equals_inference(exported):
    model, path = exported
    x = raw_images(6)
    # the model really is random in training mode ...
    a, b = np.asarray(model(x, training=True)), np.asarray(model(x, training=True))
    assert np.max(np.abs(a - b)) > 1e-4
    # ... but the exported function is the inference function
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    assert list(serve.structured_input_signature[1]) == ["images"]
    first = serve(images=tf.constant(x))["probabilities"].numpy()
    second = serve(images=tf.constant(x))["probabilities"].numpy()
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, np.asarray(model(x, training=False)), atol=1e-6)
    assert np.all(np.isfinite(first)) and np.allclose(first.sum(axis=1), 1.0, atol=1e-5)


def test_embed_signature_gives_the_encoders_features(exported):
    model, path = exported
    x = raw_images(4)
    embed = tf.saved_model.load(str(path)).signatures["embed"]
    got = embed(images=tf.constant(x))["embeddings"].numpy()
    pre = [l for l in model.layers if isinstance(l, Preprocess)][0]
    want = np.asarray(model.get_layer("encoder")(pre(x), training=False))
    assert got.shape == (4, 6)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_embed_without_an_encoder_named_encoder_uses_the_heads_input():
    # the fine-tuning code may name encoders after their architecture ("tiny", ...)
    from kerasssl.export import features_fn

    model = make_classifier(encoder_name="tiny")
    x = raw_images(3)
    pre = [l for l in model.layers if isinstance(l, Preprocess)][0]
    want = np.asarray(model.get_layer("tiny")(pre(x), training=False))
    np.testing.assert_allclose(np.asarray(features_fn(model)(x)), want, atol=1e-5)


def test_versions_increment_and_are_never_overwritten(tmp_path):
    from kerasssl.export import next_version

    base = tmp_path / "saved_models"
    assert next_version(base / "m") == 1
    for name in ("2", "7", ".tmp-9-123-abc", "notes"):
        (base / "m" / name).mkdir(parents=True)
    (base / "m" / "7" / "marker").write_text("keep")
    assert next_version(base / "m") == 8  # temp and non-numeric folders do not count
    model = make_classifier()
    with pytest.raises(KerassslError, match="already exists"):
        export_saved_model(model, base, "m", version=7)
    assert (base / "m" / "7" / "marker").read_text() == "keep"
    assert sorted(p.name for p in (base / "m").iterdir()) == [".tmp-9-123-abc", "2", "7", "notes"]


def test_a_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    import kerasssl.export as export_module

    model = make_classifier()
    seen = []

    def half_written(model, image_shape, path):
        (path / "variables").mkdir(parents=True)
        (path / "saved_model.pb").write_bytes(b"partial")
        seen.append(path)
        raise OSError("disk full")

    monkeypatch.setattr(export_module, "_write_saved_model", half_written)
    base = tmp_path / "fresh"
    with pytest.raises(OSError, match="disk full"):
        export_saved_model(model, base, "m")
    assert seen and seen[0].parent == base / "m" and seen[0].name.startswith(".")  # TF Serving ignores it
    assert not (base / "m").exists()  # the model folder it created is gone too
    # with an earlier version present: it stays, nothing is added
    (tmp_path / "old" / "m" / "1").mkdir(parents=True)
    with pytest.raises(OSError):
        export_saved_model(model, tmp_path / "old", "m")
    assert [p.name for p in (tmp_path / "old" / "m").iterdir()] == ["1"]


class EagerOffset(keras.layers.Layer):
    """Adds 0.05 when run eagerly: eager and graph kernels differ, here on purpose and plainly."""

    def call(self, x):
        return x + (0.05 if tf.executing_eagerly() else 0.0)


def test_the_parity_check_runs_the_model_as_a_graph_as_the_saved_model_does(tmp_path):
    # oneDNN's eager and graph kernels differ by round-off that a B0 amplifies to 5e-4 in a
    # probability; a check against the eager model refused every trained B0 export.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 1), name="image")
    x = Preprocess(nan_policy="median", normalization="asinh")(inputs)
    enc_in = keras.Input((SIZE, SIZE, 1))
    encoder = keras.Model(enc_in, keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(6, 3)(enc_in)),
                          name="encoder")
    x = EagerOffset()(encoder(x))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="head")(x))
    images = raw_images(8)
    assert np.max(np.abs(np.asarray(model(images)) - model.predict(images, verbose=0))) > 1e-3
    loaded = tf.saved_model.load(str(export_saved_model(model, tmp_path / "sm", "m")))
    got = loaded.signatures["serving_default"](images=tf.constant(images))["probabilities"].numpy()
    np.testing.assert_allclose(got, model.predict(images, verbose=0), atol=1e-6)


def test_cli_export_refuses_an_existing_version(exported, capsys):
    from kerasssl.cli import main

    _, path = exported
    run = path.parents[2] / "run"
    args = ["export", str(run / "classifier.keras"), "--name", "lens_finder", "--base-dir", str(path.parents[1])]
    with pytest.raises(SystemExit) as e:
        main(args + ["--version", "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kerasssl: error:") and "already exists" in err and "\n" not in err
    assert sorted(p.name for p in path.parent.iterdir()) == ["1"]


def test_export_returns_what_the_cli_prints(exported):
    _, path = exported
    result = _SHARED["export_result"]
    assert result.path == path and result.metadata == read_metadata(path)
    assert result.tflite_path == path / "lens_finder_fp32.tflite" and result.tflite_path.is_file()
    assert result.parity == json.loads((path / "lens_finder_fp32.parity.json").read_text())
    lines = result.summary_lines()
    assert lines[0] == f"SavedModel: {path}" and lines[1].startswith("signatures: serving_default, embed")
    assert lines[3] == "classes: ['nonlenses', 'lenses']"
    assert lines[4].startswith(f"TFLite fp32: {result.tflite_path} (max |diff| vs Keras "
                               f"{result.parity['max_abs_diff']:.2e}")


def test_cli_export_writes_the_next_version(tmp_path, capsys):
    from kerasssl.cli import main

    make_classifier().save(tmp_path / "clf.keras")
    with pytest.raises(SystemExit) as e:
        main(["export", str(tmp_path / "clf.keras"), "--name", "m", "--base-dir", str(tmp_path / "sm")])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"SavedModel: {tmp_path / 'sm' / 'm' / '1'}" in out and "serving_default, embed" in out
    assert read_metadata(tmp_path / "sm" / "m" / "1")["training_run_id"] is None  # not a run dir


# Run with `python -I` from a folder outside the repo. The venv's editable
# install would still import kerasssl, so its finder is removed first: the
# process sees TensorFlow and NumPy only, as TF Serving does.
FRESH_PROCESS = textwrap.dedent(
    """
    import importlib.util, os, sys
    sys.meta_path[:] = [f for f in sys.meta_path if "kerasssl" not in repr(f)]
    sys.path_hooks[:] = [h for h in sys.path_hooks if "kerasssl" not in repr(h)]
    sys.path[:] = [p for p in sys.path if not os.path.isdir(os.path.join(p, "kerasssl"))]
    sys.path_importer_cache.clear()
    import numpy as np, tensorflow as tf
    assert importlib.util.find_spec("kerasssl") is None, "kerasssl must not be importable"
    version_dir, images_npy, out_npy = sys.argv[1:4]
    loaded = tf.saved_model.load(version_dir)
    x = tf.constant(np.load(images_npy))
    out = {name: loaded.signatures[name](images=x) for name in ("serving_default", "embed")}
    result = {"probabilities": out["serving_default"]["probabilities"].numpy(),
              "embeddings": out["embed"]["embeddings"].numpy()}
    if "predict_examples" in loaded.signatures:
        packed = np.load(images_npy.replace(".npy", "_examples.npz"), allow_pickle=False)
        data, ends = packed["bytes"].tobytes(), packed["ends"]
        examples = tf.constant([data[a:b] for a, b in zip([0, *ends[:-1]], ends)])
        result["from_examples"] = loaded.signatures["predict_examples"](examples=examples)["probabilities"].numpy()
    np.savez(out_npy, **result)
    """
)


def test_loads_and_runs_in_a_fresh_tensorflow_only_process(exported, tmp_path):
    """What TF Serving does: plain TF, no kerasssl, raw pixels with NaN in."""
    model, path = exported
    x = raw_images(5, seed=3)
    np.save(tmp_path / "images.npy", x)
    has_examples = "predict_examples" in read_metadata(path)["signatures"]
    if has_examples:
        from kerasssl.data.tfrecord import encode_example

        # as stored in a TFRecord: the file's own layout (2-D for single band)
        serialized = [encode_example(img[..., 0], 0, "nonlens", f"f{i}.npy") for i, img in enumerate(x)]
        # Packed as raw bytes + end offsets: a NumPy bytes array ("S") drops
        # trailing NUL bytes, and a serialized Example can end in one (its map
        # order follows the hash seed), which corrupted it one run in four.
        np.savez(tmp_path / "images_examples.npz",
                 bytes=np.frombuffer(b"".join(serialized), dtype=np.uint8),
                 ends=np.cumsum([len(s) for s in serialized]))
    (tmp_path / "fresh.py").write_text(FRESH_PROCESS)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    # -I: isolated (no cwd, no PYTHONPATH, no user site), cwd outside the repo.
    proc = subprocess.run(
        [sys.executable, "-I", str(tmp_path / "fresh.py"), str(path), str(tmp_path / "images.npy"), str(tmp_path / "out.npz")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = np.load(tmp_path / "out.npz")
    assert np.all(np.isfinite(out["probabilities"]))
    np.testing.assert_allclose(out["probabilities"], np.asarray(model(x, training=False)), atol=1e-6)
    assert out["embeddings"].shape == (5, 6)
    if has_examples:
        np.testing.assert_allclose(out["from_examples"], out["probabilities"], atol=1e-6)


# -- faults: an unwritable base dir, killed exports, the wrong file ----------------------


def test_export_into_a_base_dir_that_cannot_be_written_is_one_line(tmp_path, capsys, monkeypatch):
    from pathlib import Path

    from kerasssl.cli import main

    make_classifier().save(tmp_path / "clf.keras")

    def export_into(base):
        with pytest.raises(SystemExit) as e:
            main(["export", str(tmp_path / "clf.keras"), "--name", "m", "--base-dir", str(base)])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2, err
        assert err.startswith("kerasssl: error:") and "\n" not in err and "Traceback" not in err, err
        return err

    (tmp_path / "a_file").write_text("not a folder")
    assert "a_file is a file, not a directory" in export_into(tmp_path / "a_file" / "saved_models")
    # Tests run as root, who may write anywhere: the missing permission is simulated.
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    os.chmod(readonly, 0o555)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != readonly and real_access(p, mode, **kw))
    assert "readonly is not writable" in export_into(readonly / "saved_models")
    monkeypatch.undo()
    # ... and a refusal that only the write itself meets (a read-only file system)
    real_mkdir = Path.mkdir

    def refused(self, *args, **kwargs):
        if tmp_path / "rofs" in (self, *self.parents):
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    (tmp_path / "rofs").mkdir()
    monkeypatch.setattr(Path, "mkdir", refused)
    assert "cannot export there (Permission denied)" in export_into(tmp_path / "rofs" / "saved_models")
    assert list((tmp_path / "rofs").iterdir()) == []


def test_an_export_removes_the_temp_versions_that_killed_exports_left(tmp_path, caplog):
    import socket
    import subprocess as sp

    from kerasssl.export import _new_temp_dir

    model_dir = tmp_path / "sm" / "m"

    def temp_version(version, pid, host=None):
        path = _new_temp_dir(model_dir, version)  # as an export makes it, then "killed" mid-write
        (path / "saved_model.pb").write_bytes(b"partial")
        owner = json.loads((path / ".kerasssl-export.json").read_text())
        owner.update(pid=pid, host=host or socket.gethostname())
        (path / ".kerasssl-export.json").write_text(json.dumps(owner))
        return path

    gone = sp.Popen(["true"])
    gone.wait()  # its pid belongs to no process now
    alive = sp.Popen(["sleep", "60"])
    try:
        killed = temp_version(1, gone.pid)
        running = temp_version(1, alive.pid)  # an export in progress keeps its folder
        elsewhere = temp_version(2, gone.pid, host="another-host")  # not ours to judge
        foreign = model_dir / ".tmp-9-123-abc"  # not named as kerasssl names them
        foreign.mkdir()
        with caplog.at_level("WARNING", logger="kerasssl.export"):
            version = export_saved_model(make_classifier(), tmp_path / "sm", "m")
    finally:
        alive.kill()
        alive.wait()
    assert version == model_dir / "1" and not killed.exists()
    assert running.exists() and elsewhere.exists() and foreign.exists()
    assert f"removed {killed}: left by an export that did not finish" in caplog.text
    assert not (version / ".kerasssl-export.json").exists()


def test_exporting_an_encoder_names_the_classifier_to_export_instead(tmp_path_factory, tmp_path, capsys):
    from kerasssl.cli import main
    from kerasssl.encoders import build_encoder
    from test_classifier import fit_run

    _, run = fit_run(tmp_path_factory)
    with pytest.raises(SystemExit) as e:
        main(["export", str(run / "encoder.keras"), "--name", "m", "--base-dir", str(tmp_path / "sm")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err, err
    assert f"{run / 'encoder.keras'}: is an encoder" in err and str(run / "classifier.keras") in err, err
    assert "class names" not in err and not (tmp_path / "sm").exists()
    # an encoder file kerasssl did not mark (an older run) is told apart by its structure
    build_encoder("tiny", (SIZE, SIZE, 1)).save(tmp_path / "old_encoder.keras")
    with pytest.raises(SystemExit) as e:
        main(["export", str(tmp_path / "old_encoder.keras"), "--name", "m", "--base-dir", str(tmp_path / "sm")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "is an encoder" in err and "kerasssl finetune" in err, err
