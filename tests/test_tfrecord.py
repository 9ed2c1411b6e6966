"""TFRecord (tf.Example) format: writer, readers, serving parser, errors."""

import numpy as np
import pytest
import tensorflow as tf

from kerasssl.data import tfrecord


def numpy_hwc(array):
    """NumPy reference of the loader's layout rule."""
    if array.ndim == 2:
        return array[..., None]
    if array.shape[0] <= 4 < array.shape[1]:
        return np.moveaxis(array, 0, -1)
    return array


def numpy_crop(image, size):
    top = (image.shape[0] - size) // 2
    left = (image.shape[1] - size) // 2
    return image[top:top + size, left:left + size]


# -- parse_examples_to_images: the serving signature's body ------------------

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
