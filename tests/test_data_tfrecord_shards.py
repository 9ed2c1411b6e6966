"""kerasssl.data.tfrecord.shards: a bad shard or record is one DataError naming the shard and record."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import write_record_file
from kerasssl.data import tfrecord
from kerasssl.errors import DataError


def test_truncated_shard_names_shard_and_record(hst_folder, tmp_path):
    out = tmp_path / "rec"
    tfrecord.write_tfrecords(hst_folder, out, shards=2, compression="gzip", progress=False)
    shard = out / "data-00001-of-00002.tfrecord.gz"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(DataError, match=r"data-00001-of-00002\.tfrecord\.gz: corrupt or "
                                        r"truncated TFRecord at record \d+"):
        tfrecord.load_tfrecords(str(out / "*.tfrecord*"))


def test_flipped_byte_is_a_corrupt_record(hst_folder, tmp_path):
    out = tmp_path / "rec"
    tfrecord.write_tfrecords(hst_folder, out, shards=2, progress=False)
    shard = out / "data-00000-of-00002.tfrecord"
    data = bytearray(shard.read_bytes())
    record_size = len(data) // 18  # 18 equal-size records
    data[3 * record_size + 100] ^= 0xFF  # inside record 3's image bytes
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"data-00000-of-00002\.tfrecord: corrupt .* at record 3 "):
        tfrecord.load_tfrecords(out)


def test_shard_cut_at_a_record_boundary_fails_the_manifest_count(hst_folder, tmp_path):
    out = tmp_path / "rec"
    tfrecord.write_tfrecords(hst_folder, out, shards=2, progress=False)
    shard = out / "data-00001-of-00002.tfrecord"
    records = [r.numpy() for r in tf.data.TFRecordDataset(str(shard))]
    write_record_file(shard, records[:-1])  # valid file, one record short
    with pytest.raises(DataError, match=r"00001-of-00002\.tfrecord: holds 17 records but the "
                                        r"manifest lists 18"):
        tfrecord.load_tfrecords(out)


def test_example_without_label_names_shard_and_record(tmp_path):
    image = np.ones((8, 8), np.float32)
    good = tfrecord.encode_example(image, 0, "nonlens", "a.npy")
    example = tf.train.Example.FromString(tfrecord.encode_example(image, 1, "lens", "b.npy"))
    del example.features.feature["label"]
    shard = tmp_path / "part.tfrecord"
    write_record_file(shard, [good, example.SerializeToString()])
    with pytest.raises(DataError, match=r"part\.tfrecord: record 1: missing feature 'label'"):
        tfrecord.load_tfrecords(str(shard))
    with pytest.raises(DataError, match="record 1: missing feature 'label'"):
        tfrecord.check_shards([str(shard)])
