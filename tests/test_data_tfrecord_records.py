"""kerasssl.data.tfrecord.records: the record format, encoded, checked, parsed as the serving signature does."""

import numpy as np
import pytest
import tensorflow as tf

from kerasssl.data import tfrecord


def numpy_hwc(array):
    """The folder loader's layout rule (NumPy), the reference for the TF parser."""
    from kerasssl.data.load import to_hwc
    return to_hwc(array, "x.npy")


def numpy_crop(image, size):
    top = (image.shape[0] - size) // 2
    left = (image.shape[1] - size) // 2
    return image[top:top + size, left:left + size]


def test_parse_examples_matches_numpy_layout_and_crop():
    rng = np.random.default_rng(1)
    chw = rng.normal(size=(3, 11, 11)).astype(np.float32)
    chw[1, 4, 5] = np.nan
    hwc = rng.normal(size=(9, 10, 3)).astype(np.float32)
    hwc[4, 4, 2] = np.inf
    as_f64 = rng.normal(size=(3, 8, 8))  # float64 file: stored as float32
    records = [tfrecord.encode_example(a, 0, "c", f"f{i}.npy")
               for i, a in enumerate([chw, hwc, as_f64])]
    images = tfrecord.parse_examples_to_images(tf.constant(records), (8, 8, 3)).numpy()
    assert images.dtype == np.float32 and images.shape == (3, 8, 8, 3)
    for got, array in zip(images, [chw, hwc, as_f64]):
        want = numpy_crop(numpy_hwc(array.astype(np.float32)), 8)
        np.testing.assert_array_equal(got, want)  # NaN/Inf kept in place
    assert np.isnan(images[0]).sum() == 1 and np.isinf(images[1]).sum() == 1
    # More than 4 bands: a (C, H, H) cube is channels-first, (H, W, C) stays.
    cube = rng.normal(size=(6, 9, 9)).astype(np.float32)
    hwc6 = rng.normal(size=(10, 9, 6)).astype(np.float32)
    records = [tfrecord.encode_example(a, 0, "c", "f.npy") for a in (cube, hwc6)]
    images = tfrecord.parse_examples_to_images(tf.constant(records), (8, 8, 6)).numpy()
    np.testing.assert_array_equal(images[0], np.moveaxis(cube, 0, -1)[0:8, 0:8])
    np.testing.assert_array_equal(images[1], hwc6[1:9, 0:8])


def test_parse_examples_single_band_and_image_only_features():
    # A serving client may send only `image` and `shape`.
    image = np.arange(100, dtype=np.float32).reshape(10, 10)
    features = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.tobytes()])),
        "shape": tf.train.Feature(int64_list=tf.train.Int64List(value=[10, 10])),
    }
    record = tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()
    fn = tf.function(lambda s: tfrecord.parse_examples_to_images(s, (6, 6, 1)),
                     input_signature=[tf.TensorSpec([None], tf.string)])
    out = fn(tf.constant([record, record])).numpy()
    np.testing.assert_array_equal(out[1, ..., 0], image[2:8, 2:8])
    assert fn(tf.constant([], tf.string)).shape == (0, 6, 6, 1)


@pytest.mark.parametrize("array, shape, match", [
    (np.zeros((8, 8, 1), np.float32), (8, 8, 3), "channels"),
    (np.zeros((4, 4, 3), np.float32), (8, 8, 3), "smaller"),
    (np.zeros((2, 8, 8, 3), np.float32), (8, 8, 3), "2-D or 3-D"),
])
def test_parse_examples_rejects_wrong_images(array, shape, match):
    record = tfrecord.encode_example(array, 0, "c", "x.npy")
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
        tfrecord.parse_examples_to_images(tf.constant([record]), shape)


@pytest.mark.parametrize("mutate, problem", [
    (lambda f: f["shape"].int64_list.value.append(2), "needs"),
    (lambda f: f["image"].bytes_list.value.append(b"x"), "has 2 values"),
    (lambda f: f["filename"].Clear(), "not a bytes_list"),
])
def test_example_problem_reports_malformed_features(mutate, problem):
    assert set(tfrecord.FEATURE_DOCS) == set(tfrecord.FEATURES)  # manifest documents them all
    example = tf.train.Example.FromString(
        tfrecord.encode_example(np.ones((4, 6), np.float32), 0, "c", "x.npy"))
    assert tfrecord.example_problem(example.SerializeToString()) is None
    mutate(example.features.feature)
    assert problem in tfrecord.example_problem(example.SerializeToString())
    assert tfrecord.example_problem(b"\xff\xff garbage") == "not a tf.Example protocol buffer"


def test_encode_example_gives_the_same_bytes_in_every_process():
    # The Example's feature map would otherwise serialize in a per-process
    # hash order: shards would differ run to run, and a serialized record could
    # end in a NUL byte one time in four (which NumPy "S" arrays silently drop).
    import subprocess
    import sys

    code = (
        "import hashlib, numpy as np\n"
        "from kerasssl.data.tfrecord import encode_example\n"
        "a = np.arange(48, dtype='float32').reshape(3, 4, 4); a[0, 0, 0] = np.nan\n"
        "print(hashlib.sha256(encode_example(a, 1, 'lenses', 'lenses/a.npy')).hexdigest())\n"
    )
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True).stdout.strip() for _ in range(4)}
    assert len(digests) == 1, digests
