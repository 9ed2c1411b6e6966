"""kerasssl.data.tfrecord.reader: shards read into the ImageSet the folder gives."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import write_record_file
from kerasssl.data import tfrecord
from kerasssl.errors import DataError


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_load_tfrecords_equals_load_images(hst_folder, tmp_path, compression):
    from kerasssl.data.clean import nonfinite_report
    from kerasssl.data.load import load_images
    out = tmp_path / "rec"
    tfrecord.write_tfrecords(hst_folder, out, shards=4, compression=compression, progress=False)
    suffix = ".tfrecord.gz" if compression == "gzip" else ".tfrecord"
    assert all(p.name.endswith(suffix) for p in out.glob("data-*"))
    want = load_images(hst_folder)
    got = load_images(str(out / "*.tfrecord*"))  # load.py delegates to load_tfrecords
    assert got.format == "tfrecord"
    assert got.class_names == want.class_names == ["nonlens", "lens"]
    assert sorted(got.files) == sorted(want.files)
    order = [want.files.index(f) for f in got.files]
    np.testing.assert_array_equal(got.labels, want.labels[order])
    np.testing.assert_array_equal(got.images, want.images[order])  # NaN in the same places
    assert np.isnan(got.images).sum() == 12  # 4 files x 3 NaN pixels
    assert nonfinite_report(got) == nonfinite_report(want.subset(order))
    from kerasssl.data.split import make_split
    split_folder, split_shards = make_split(want, seed=4), make_split(got, seed=4)
    for name in ("train", "val", "test"):  # hashes of the same relpaths: the same split
        assert sorted(getattr(split_shards, name)) == sorted(getattr(split_folder, name))
    cropped = tfrecord.load_tfrecords(out, image_size=20)  # a folder of shards works too
    np.testing.assert_array_equal(cropped.images,
                                  load_images(hst_folder, image_size=20).images[order])


def test_class_names_without_manifest_come_from_features(three_band_folder, tmp_path):
    out = tmp_path / "rec"
    tfrecord.write_tfrecords(three_band_folder, out, shards=2, progress=False)
    (out / "manifest.json").unlink()
    data = tfrecord.load_tfrecords(str(out / "*.tfrecord"))
    assert data.class_names == ["nonlenses", "lenses"]
    assert data.class_counts() == {"nonlenses": 16, "lenses": 20}
    assert data.images.shape == (36, 32, 32, 3)


def test_serving_parser_matches_loader_on_converted_records(three_band_folder, tmp_path):
    from kerasssl.data.load import load_images
    out = tmp_path / "rec"
    tfrecord.write_tfrecords(three_band_folder, out, shards=1, progress=False)
    raw = [r.numpy() for r in tf.data.TFRecordDataset(str(out / "data-00000-of-00001.tfrecord"))]
    served = tfrecord.parse_examples_to_images(tf.constant(raw), (24, 24, 3)).numpy()
    loaded = load_images(three_band_folder, image_size=24)
    np.testing.assert_array_equal(served, loaded.images)  # one shard keeps the listing order


def test_no_match_and_duplicate_filenames(tmp_path):
    with pytest.raises(DataError, match="no TFRecord files match"):
        tfrecord.load_tfrecords(str(tmp_path / "*.tfrecord"))
    record = tfrecord.encode_example(np.ones((8, 8), np.float32), 0, "nonlens", "a.npy")
    write_record_file(tmp_path / "one.tfrecord", [record])
    write_record_file(tmp_path / "two.tfrecord", [record])
    with pytest.raises(DataError, match=r"two\.tfrecord: record 0 \(a\.npy\): filename also in"):
        tfrecord.load_tfrecords(str(tmp_path / "*.tfrecord"))
    (tmp_path / "manifest.json").write_text("{}")
    both = [str(tmp_path / "one.tfrecord"), str(tmp_path / "two.tfrecord")]
    assert tfrecord.find_shards(str(tmp_path / "*")) == both  # the manifest is no shard
    assert tfrecord.find_shards(tmp_path) == both
    assert tfrecord.find_shards([both[1], str(tmp_path / "o*")]) == both


def test_mixed_sizes_need_image_size_and_are_cropped(tmp_path):
    rng = np.random.default_rng(2)
    small = rng.normal(size=(3, 10, 10)).astype(np.float32)
    large = rng.normal(size=(3, 12, 12)).astype(np.float32)
    shard = tmp_path / "mixed.tfrecord"
    write_record_file(shard, [tfrecord.encode_example(small, 0, "nonlenses", "nonlenses/a.npy"),
                              tfrecord.encode_example(large, 1, "lenses", "lenses/b.npy")])
    with pytest.raises(DataError, match=r"mixed\.tfrecord: record 1 \(lenses/b\.npy\): image is "
                                        r"12x12 but nonlenses/a\.npy is 10x10; pass --image-size"):
        tfrecord.load_tfrecords(str(shard))
    with pytest.raises(DataError, match=r"record 0 \(nonlenses/a\.npy\): image is 10x10, smaller "
                                        r"than the crop size 11"):
        tfrecord.load_tfrecords(str(shard), image_size=11)
    data = tfrecord.load_tfrecords(str(shard), image_size=10)
    assert data.class_names == ["nonlenses", "lenses"] and data.files == ["nonlenses/a.npy",
                                                                          "lenses/b.npy"]
    np.testing.assert_array_equal(data.images[1], np.moveaxis(large, 0, -1)[1:11, 1:11])
    assert data.meta["stored_shapes"] == [[3, 10, 10], [3, 12, 12]]
