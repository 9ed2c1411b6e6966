"""kerasssl.data.imageset: ImageSet and the shape rules every reader applies (crop, one shape)."""

import numpy as np
import pytest

from kerasssl.data.imageset import (ImageSet, center_crop, center_crop_tensor, check_image_size,
                                    crop_to_size, shape_mismatch)
from kerasssl.data.load import load_images
from kerasssl.errors import DataError, KerassslError


def test_subset_keeps_rows_in_order(three_band_folder):
    data = load_images(three_band_folder)
    sub = data.subset([5, 1])
    assert isinstance(sub, ImageSet) and sub.files == [data.files[5], data.files[1]]
    np.testing.assert_array_equal(sub.images[0], data.images[5])
    assert sub.labels.tolist() == [data.labels[5], data.labels[1]]
    assert sub.class_names == data.class_names and sub.format == data.format


def test_center_crop_offsets():
    x = np.arange(7 * 6, dtype=np.float32).reshape(7, 6, 1)
    np.testing.assert_array_equal(center_crop(x, 4)[..., 0], x[1:5, 1:5, 0])
    np.testing.assert_array_equal(center_crop(x[None], (3, 2))[0, ..., 0], x[2:5, 2:4, 0])
    with pytest.raises(KerassslError, match="smaller than the crop size"):
        center_crop(x, 7)


@pytest.mark.parametrize("shape, size", [((7, 6, 1), (4, 4)), ((9, 12, 3), (8, 5)), ((5, 5, 2), (5, 5))])
def test_the_numpy_and_tensorflow_crops_cut_the_same_pixels(shape, size):
    import tensorflow as tf

    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    want = center_crop(x, size)
    # In a graph with unknown H and W, as in tf.data and the serving signature.
    crop = tf.function(lambda t: center_crop_tensor(t, *size),
                       input_signature=[tf.TensorSpec([None, None, shape[2]], tf.float32)])
    np.testing.assert_array_equal(crop(tf.constant(x)).numpy(), want)
    with pytest.raises(tf.errors.InvalidArgumentError, match="smaller than the crop size"):
        crop(tf.zeros((size[0] - 1, size[1], shape[2])))


def test_crop_to_size_keeps_crops_or_refuses_naming_the_file_and_record():
    x = np.arange(11 * 11, dtype=np.float32).reshape(11, 11, 1)
    assert crop_to_size(x, None, "a.npy") is x
    np.testing.assert_array_equal(crop_to_size(x, 8, "a.npy"), x[1:9, 1:9])
    with pytest.raises(DataError, match=r"^b\.npy: image is 11x11, smaller than the crop size 12 "
                                        r"\(images are cropped, never padded\)$"):
        crop_to_size(x, 12, "b.npy")
    with pytest.raises(DataError, match=r"^s\.tfrecord: record 3 \(x\.npy\): image is 11x11, smaller"):
        crop_to_size(x, 12, "s.tfrecord", where="record 3 (x.npy): ")


def test_shape_mismatch_says_whether_a_crop_would_help():
    assert shape_mismatch((8, 8, 3), (8, 8, 1), "a.npy", None) == (
        "has 3 band(s) but a.npy has 1; all images need the same number of bands")
    assert shape_mismatch((12, 12, 1), (10, 10, 1), "a.npy", None).endswith(
        "image is 12x12 but a.npy is 10x10; pass --image-size (image_size=) to centre-crop all to one size")
    assert shape_mismatch((12, 12, 1), (10, 10, 1), "a.npy", 10) == "image is 12x12 but a.npy is 10x10"


@pytest.mark.parametrize("size", [0, -3, 2.5])
def test_check_image_size_refuses_what_is_not_a_positive_integer(size):
    check_image_size(None)
    check_image_size(32)
    with pytest.raises(KerassslError, match="image size must be a positive integer"):
        check_image_size(size)
