"""`kerasssl predict`: the same probabilities from .keras, SavedModel and .tflite,
files read like the loader (transposed, centre-cropped, NaN kept), bad input -> exit 2."""

import json

import numpy as np
import pytest
import tensorflow as tf

from conftest import write_class_folders, write_hst_folder
from kerasssl.errors import DataError
from kerasssl.inference import load_survey_model
from kerasssl.models import resolve_saved_model_dir
from kerasssl.predict import predict_files
from test_export import SIZE, make_classifier, shared_export


@pytest.fixture
def exported(tmp_path_factory):
    return shared_export(tmp_path_factory)


def reference(model, files):
    """What the model gives on the centre-cropped (H, W, 1) images, in NumPy."""
    images = []
    for f in files:
        a = np.load(f).astype(np.float32)
        top = (a.shape[0] - SIZE) // 2
        images.append(a[top : top + SIZE, top : top + SIZE, None])
    return np.asarray(model(np.stack(images), training=False))


def test_keras_savedmodel_and_tflite_agree_on_files(exported, tmp_path):
    model, run, version_dir = exported
    folder = write_hst_folder(tmp_path / "hst", 3, 3, size=SIZE + 5, nan_files=2, seed=4)
    files = sorted(folder.glob("*.npy"))
    want = reference(model, files)
    results = {
        "keras": predict_files(run / "classifier.keras", [folder]),
        "version dir": predict_files(version_dir, [folder]),
        "model dir (latest version)": predict_files(version_dir.parent, files),
        "tflite": predict_files(version_dir / "lens_finder_fp32.tflite", [folder]),
    }
    for kind, result in results.items():
        assert sorted(result.files) == sorted(map(str, files)), kind
        order = np.argsort(result.files)
        assert np.all(np.isfinite(result.probabilities)), kind
        np.testing.assert_allclose(result.probabilities[order], want, atol=1e-4, err_msg=kind)
        assert result.class_names == ["nonlenses", "lenses"], kind
    np.testing.assert_allclose(results["keras"].lens_probability, results["keras"].probabilities[:, 1])


def test_latest_version_is_found_and_temp_folders_ignored(tmp_path):
    for name in ("1", "3", ".tmp-4-1-x", "10x"):
        (tmp_path / "m" / name).mkdir(parents=True)
    for name in ("1", "3"):
        (tmp_path / "m" / name / "saved_model.pb").write_bytes(b"")
    assert resolve_saved_model_dir(tmp_path / "m") == tmp_path / "m" / "3"
    assert resolve_saved_model_dir(tmp_path / "m" / "1") == tmp_path / "m" / "1"
    with pytest.raises(DataError, match="no saved_model.pb"):
        resolve_saved_model_dir(tmp_path / "m" / "10x")


def test_channels_first_multiclass_json_and_table(tmp_path, capsys):
    from kerasssl.cli import main

    model = make_classifier(channels=3, n_classes=3)
    model.save(tmp_path / "clf.keras")
    folder = write_class_folders(tmp_path / "3b", {"axion": 2, "cdm": 1}, size=SIZE + 4, channels=3)
    files = sorted(folder.rglob("*.npy"))
    images = np.stack([np.moveaxis(np.load(f), 0, -1)[2 : 2 + SIZE, 2 : 2 + SIZE] for f in files])
    want = np.asarray(model(images, training=False))

    with pytest.raises(SystemExit) as e:
        main(["predict", str(tmp_path / "clf.keras"), str(folder), "--json"])
    assert e.value.code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["class_names"] == ["class_0", "class_1", "class_2"] and out["kind"] == "keras"
    assert [row["file"] for row in out["predictions"]] == [str(f) for f in files]
    got = np.array([[row["probabilities"][c] for c in out["class_names"]] for row in out["predictions"]])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert [row["predicted_class"] for row in out["predictions"]] == [f"class_{i}" for i in want.argmax(1)]

    with pytest.raises(SystemExit) as e:
        main(["predict", str(tmp_path / "clf.keras"), str(files[0])])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["file", "p(class_0)", "p(class_1)", "p(class_2)"]
    assert len(lines) == 2 and float(lines[1].split()[2]) == pytest.approx(want[0, 1], abs=1e-4)


def test_cli_table_for_a_binary_savedmodel(exported, tmp_path, capsys):
    from kerasssl.cli import main

    model, _, version_dir = exported
    folder = write_hst_folder(tmp_path / "hst", 2, 1, size=SIZE, nan_files=1)
    with pytest.raises(SystemExit) as e:
        main(["predict", str(version_dir.parent), str(folder)])
    assert e.value.code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["file", "p(lenses)"] and len(lines) == 4
    files = [line.split()[0] for line in lines[1:]]
    want = reference(model, files)[:, 1]
    np.testing.assert_allclose([float(line.split()[1]) for line in lines[1:]], want, atol=1e-4)


def bad_inputs(root):
    """(description, path) of inputs that must be refused with one line and exit 2."""
    root.mkdir()
    np.save(root / "flat.npy", np.zeros(10, np.float32))
    np.save(root / "small.npy", np.zeros((SIZE - 2, SIZE - 2), np.float32))
    np.save(root / "allnan.npy", np.full((SIZE, SIZE), np.nan, np.float32))
    np.save(root / "rgb.npy", np.zeros((3, SIZE, SIZE), np.float32))
    (root / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    (root / "empty").mkdir()
    return {
        "flat.npy": "1-D",
        "small.npy": "smaller than the model input",
        "allnan.npy": "NaN",
        "rgb.npy": "band",
        "corrupt.npy": "",
        "empty": "no .npy",
        "missing.npy": "no such file or folder",
    }


def test_bad_input_is_one_line_and_exit_2(exported, tmp_path, capsys):
    from kerasssl.cli import main

    _, run, version_dir = exported
    cases = bad_inputs(tmp_path / "bad")
    for name, needle in cases.items():
        with pytest.raises(SystemExit) as e:
            main(["predict", str(run / "classifier.keras"), str(tmp_path / "bad" / name)])
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert e.value.code == 2, (name, err)
        assert err.startswith("kerasssl: error:") and "\n" not in err and "Traceback" not in err, err
        assert name in err and needle in err, err
        assert captured.out == ""
    for model in (tmp_path / "nomodel.keras", tmp_path / "bad"):
        with pytest.raises(SystemExit) as e:
            main(["predict", str(model), str(tmp_path / "bad" / "rgb.npy")])
        assert e.value.code == 2
        assert capsys.readouterr().err.startswith("kerasssl: error:")


def test_the_loaded_model_reports_its_input(exported):
    _, _, version_dir = exported
    loaded = load_survey_model(version_dir / "lens_finder_fp32.tflite")
    assert loaded.kind == "tflite" and loaded.image_shape == (SIZE, SIZE, 1)


def test_tfrecord_shards_labelled_or_not_give_the_same_as_the_folder(exported, tmp_path, caplog):
    from kerasssl.data.pool import convert_pool
    from kerasssl.data.tfrecord import write_tfrecords

    _, _, version_dir = exported
    folder = write_hst_folder(tmp_path / "hst", 3, 2, size=SIZE + 4, nan_files=2, seed=8)
    write_tfrecords(folder, tmp_path / "rec", shards=2, progress=False)
    convert_pool(folder, tmp_path / "pool", shards=2, progress=False)
    from_folder = predict_files(version_dir, [folder])
    by_name = {f.rsplit("/", 1)[-1]: p for f, p in zip(from_folder.files, from_folder.probabilities)}
    # A glob, a folder of shards, unlabeled shards (a survey's usual form): named as converted.
    for shards in (str(tmp_path / "rec" / "*.tfrecord*"), tmp_path / "rec", tmp_path / "pool"):
        from_records = predict_files(version_dir, [shards])
        assert sorted(by_name) == sorted(from_records.files), shards
        for name, probs in zip(from_records.files, from_records.probabilities):
            np.testing.assert_allclose(probs, by_name[name], atol=1e-6)
    # A folder of shards holds its manifest.json: no "files left out" warning; a stray beside images is.
    assert "left out" not in caplog.text
    (folder / "notes.md").write_text("seeing 0.8 arcsec")
    predict_files(version_dir, [folder])
    assert f"{folder}: 1 file(s) that are not .npy/FITS images were left out" in caplog.text


def test_records_without_a_filename_are_named_shard_and_index(exported, tmp_path):
    _, _, version_dir = exported
    images = [np.random.default_rng(k).normal(size=(SIZE, SIZE)).astype(np.float32) for k in range(3)]
    shard = tmp_path / "part.tfrecord"
    with tf.io.TFRecordWriter(str(shard)) as writer:  # as TFX ExampleGen or another tool writes them
        for image in images:
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.astype("<f4").tobytes()])),
                "shape": tf.train.Feature(int64_list=tf.train.Int64List(value=list(image.shape))),
            })).SerializeToString())
    result = predict_files(version_dir, [shard])
    assert result.files == [f"{shard}:{k}" for k in range(3)]
    want = load_survey_model(version_dir).predict(np.stack(images)[..., None], batch_size=8)
    np.testing.assert_allclose(result.probabilities, want, atol=1e-6)


def test_a_keras_file_of_random_bytes_is_not_a_keras_archive(tmp_path, capsys):
    from kerasssl.cli import main

    fake = tmp_path / "model.keras"
    fake.write_bytes(np.random.default_rng(0).bytes(4096))
    np.save(tmp_path / "image.npy", np.zeros((SIZE, SIZE), np.float32))
    notzip = tmp_path / "zipped.keras"
    import zipfile

    with zipfile.ZipFile(notzip, "w") as archive:
        archive.writestr("readme.txt", "a zip, but no Keras model inside")
    for path, needle in ((fake, "not a Keras archive (a .keras file is a zip archive; this one is not)"),
                         (notzip, "not a Keras archive (a zip file without the model's config.json)")):
        with pytest.raises(SystemExit) as e:
            main(["predict", str(path), str(tmp_path / "image.npy")])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and err == f"kerasssl: error: {path}: {needle}", err


def test_a_damaged_savedmodel_is_one_line_saying_to_export_it_again(exported, tmp_path, capsys):
    import shutil

    from kerasssl.cli import main

    _, _, version_dir = exported
    np.save(tmp_path / "image.npy", np.zeros((SIZE, SIZE), np.float32))
    for damaged in ("saved_model.pb", "variables/variables.data-00000-of-00001"):
        copy = tmp_path / damaged.split("/")[0] / "lens_finder" / "1"
        shutil.copytree(version_dir, copy)
        data = (copy / damaged).read_bytes()
        (copy / damaged).write_bytes(data[: len(data) // 3])  # a copy cut short
        with pytest.raises(SystemExit) as e:
            main(["predict", str(copy.parent), str(tmp_path / "image.npy")])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and "\n" not in err, err
        assert err.startswith(f"kerasssl: error: {copy}: cannot load the SavedModel: saved_model.pb or "
                              "variables/ is damaged or incomplete (") and err.endswith("); export it again"), err


def test_predict_with_an_encoder_says_which_file_to_use(tmp_path, capsys):
    from kerasssl.cli import main
    from kerasssl.encoders import build_encoder

    build_encoder("tiny", (SIZE, SIZE, 1)).save(tmp_path / "encoder.keras")
    make_classifier().save(tmp_path / "classifier.keras")
    np.save(tmp_path / "image.npy", np.zeros((SIZE, SIZE), np.float32))
    with pytest.raises(SystemExit) as e:
        main(["predict", str(tmp_path / "encoder.keras"), str(tmp_path / "image.npy")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "is an encoder" in err and str(tmp_path / "classifier.keras") in err, err


def test_the_cli_prints_no_native_lines_with_a_tflite_model(exported, tmp_path):
    """LiteRT announces its XNNPACK delegate on fd 2 whatever TF_CPP_MIN_LOG_LEVEL says; the CLI hides it."""
    import os
    import subprocess
    import sys

    _, _, version_dir = exported
    np.save(tmp_path / "image.npy", np.zeros((SIZE, SIZE), np.float32))
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-m", "kerasssl", "predict", str(version_dir / "lens_finder_fp32.tflite"),
                           str(tmp_path / "image.npy")], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and "image.npy" in proc.stdout
