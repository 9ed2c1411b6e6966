"""kerasssl.fingerprints: content hashes of training images, carried inside .keras files."""

import json
import zipfile

import keras
import numpy as np
import pytest

from kerasssl.errors import DataError
from kerasssl.fingerprints import MANIFEST, TrainingFingerprints, fingerprint, fingerprints, role_of
from test_classifier import fit_run


def images(n, seed=0, shape=(8, 8, 2)):
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype(np.float32)


def test_a_fingerprint_is_of_the_content_not_the_dtype_or_the_copy():
    x = images(1)[0]
    assert len(fingerprint(x)) == 16
    assert fingerprint(x) == fingerprint(x.copy()) == fingerprint(x.astype(np.float64))
    assert fingerprint(x) == fingerprint(np.asfortranarray(x))  # memory layout does not matter
    changed = x.copy()
    changed[3, 4, 1] += 1e-3
    assert fingerprint(changed) != fingerprint(x)
    # the same bytes in another shape are another image
    assert fingerprint(x.reshape(4, 16, 2)) != fingerprint(x)
    nan = x.copy()
    nan[0, 0, 0] = np.nan
    assert fingerprint(nan) == fingerprint(nan.copy())  # NaN pixels hash the same every time
    with pytest.raises(ValueError):
        fingerprint(x[..., 0])


def test_overlap_and_union_by_stage():
    x = images(6)
    fp = TrainingFingerprints({"pretrain": fingerprints(x), "finetune": fingerprints(x[:2])})
    assert fp.counts() == {"pretrain": 6, "finetune": 2}
    candidates = fingerprints(np.concatenate([images(3, seed=9), x[1:4]]))
    found = fp.overlap(candidates)
    assert {k: v.tolist() for k, v in found.items()} == {"pretrain": [3, 4, 5], "finetune": [3]}
    merged = fp.union(TrainingFingerprints({"finetune": fingerprints(x[1:3])}))
    assert merged.counts() == {"pretrain": 6, "finetune": 3}  # duplicates counted once


def test_stored_in_a_keras_file_that_keras_still_loads(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    path = tmp_path / "m.keras"
    model.save(path)
    assert TrainingFingerprints.read(path) is None and role_of(path) is None
    x = images(5)
    TrainingFingerprints({"pretrain": fingerprints(x)}).write(path, role="encoder")
    assert MANIFEST in zipfile.ZipFile(path).namelist()
    loaded = keras.saving.load_model(path)  # Keras ignores the extra entries
    np.testing.assert_array_equal(np.asarray(loaded(np.ones((1, 4)))), np.asarray(model(np.ones((1, 4)))))
    stored = TrainingFingerprints.read(path)
    assert stored.counts() == {"pretrain": 5} and role_of(path) == "encoder"
    assert stored.overlap(fingerprints(x[2:3]))["pretrain"].tolist() == [0]
    with pytest.raises(ValueError, match="already holds"):
        stored.write(path, role="encoder")


def test_a_broken_record_is_one_line(tmp_path):
    path = tmp_path / "m.keras"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(path)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(MANIFEST, json.dumps({"format": 1, "hash": "md5 of something else"}))
    with pytest.raises(DataError, match="unknown format") as e:
        TrainingFingerprints.read(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_a_fit_run_records_what_trained_the_encoder_and_the_classifier(tmp_path_factory):
    from kerasssl.data.load import load_images
    from kerasssl.data.split import Split

    data, run = fit_run(tmp_path_factory)
    image_set = load_images(data)
    split = Split.load(run / "split.json")
    train = fingerprints(image_set.images[split.indices(image_set, "train")])
    labeled = fingerprints(image_set.images[split.indices(image_set, "labeled")])
    test = fingerprints(image_set.images[split.indices(image_set, "test")])

    encoder = TrainingFingerprints.read(run / "encoder.keras")
    assert role_of(run / "encoder.keras") == "encoder"
    assert encoder.counts() == {"pretrain": len(train)}
    assert len(encoder.overlap(train)["pretrain"]) == len(train)

    classifier = TrainingFingerprints.read(run / "classifier.keras")
    assert role_of(run / "classifier.keras") == "classifier"
    assert classifier.counts() == {"pretrain": len(train), "finetune": len(labeled)}
    assert 0 < len(labeled) < len(train)  # half the labels: the stages differ
    assert len(classifier.overlap(labeled)["finetune"]) == len(labeled)
    assert classifier.overlap(test) == {}
