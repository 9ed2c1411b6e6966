"""kerasssl.data.tfrecord.writer: a folder -> shards + manifest; refusals leave nothing behind."""

import numpy as np
import pytest
import tensorflow as tf

from kerasssl.data import tfrecord
from kerasssl.errors import DataError, KerassslError


def read_shard(path):
    """(filename, label, shape, image bytes) of every record of one shard, in order."""
    compression = "GZIP" if str(path).endswith(".gz") else ""
    out = []
    for record in tf.data.TFRecordDataset(str(path), compression_type=compression):
        feature = tf.train.Example.FromString(record.numpy()).features.feature
        out.append((feature["filename"].bytes_list.value[0].decode(),
                    feature["label"].int64_list.value[0],
                    tuple(feature["shape"].int64_list.value),
                    feature["image"].bytes_list.value[0]))
    return out


def test_convert_stores_arrays_as_read_round_robin(three_band_folder, tmp_path):
    out = tmp_path / "rec"
    manifest = tfrecord.write_tfrecords(three_band_folder, out, shards=3, progress=False)
    from kerasssl.data.load import scan
    listing = scan(three_band_folder)
    assert manifest["class_names"] == ["nonlenses", "lenses"] == listing.class_names
    assert manifest["counts"] == {"nonlenses": 16, "lenses": 20}
    assert manifest["shape"] == [3, 32, 32] and manifest["dtype"] == "float32"
    assert manifest["files"] == [f"data-0000{i}-of-00003.tfrecord" for i in range(3)]
    assert manifest["records_per_shard"] == [12, 12, 12]
    assert sorted(p.name for p in out.iterdir()) == sorted(manifest["files"] + ["manifest.json"])
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]
    for k, name in enumerate(manifest["files"]):
        records = read_shard(out / name)
        # Record i of the listing goes to shard i % 3.
        assert [(f, lab) for f, lab, _, _ in records] == listing.entries[k::3]
        for filename, _, shape, raw in records:
            stored = np.load(three_band_folder / filename)  # channels-first, as in the file
            assert shape == stored.shape == (3, 32, 32)
            assert raw == stored.astype("<f4").tobytes()


def test_writer_refuses_and_leaves_nothing_behind(hst_folder, tmp_path):
    before = sorted(p.name for p in hst_folder.iterdir())
    with pytest.raises(DataError, match="inside the data folder"):
        tfrecord.write_tfrecords(hst_folder, hst_folder / "rec", progress=False)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("keep me")
    with pytest.raises(DataError, match="already exists and is not an empty folder"):
        tfrecord.write_tfrecords(hst_folder, taken, progress=False)
    assert (taken / "x").read_text() == "keep me"
    with pytest.raises(KerassslError, match="more than the 36 images"):
        tfrecord.write_tfrecords(hst_folder, tmp_path / "many", shards=37, progress=False)
    with pytest.raises(KerassslError, match="compression"):
        tfrecord.write_tfrecords(hst_folder, tmp_path / "zip", compression="zip", progress=False)
    (hst_folder / "zz_bad_hst.npy").write_bytes(b"\x93NUMPY garbage")  # read last
    with pytest.raises(DataError, match="zz_bad_hst.npy"):
        tfrecord.write_tfrecords(hst_folder, tmp_path / "rec", shards=2, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hst", "taken"]  # no OUT, no temp
    assert sorted(p.name for p in hst_folder.iterdir()) == sorted(before + ["zz_bad_hst.npy"])
    empty = tmp_path / "empty"
    empty.mkdir()
    (hst_folder / "zz_bad_hst.npy").unlink()
    tfrecord.write_tfrecords(hst_folder, empty, progress=False)  # an empty OUT is fine
    assert (empty / "data-00000-of-00001.tfrecord").exists()
