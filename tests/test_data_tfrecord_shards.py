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


def test_read_problems_say_bytes_in_plain_words(tmp_path):
    # TF reports byte offsets inside graph-function prefixes; the record index is ours.
    from kerasssl.data.tfrecord.shards import check_shards, record_read_problem

    garbage = tmp_path / "notes.tfrecord"
    garbage.write_bytes(b"these are not TFRecord frames at all")
    with pytest.raises(DataError) as caught:
        check_shards([str(garbage)])
    assert str(caught.value) == (f"{garbage}: corrupt or truncated TFRecord at record 0 "
                                 "(corrupt record framing at byte 0; not a TFRecord file?)")
    tf_message = ("{{function_node __wrapped__IteratorGetNext_device_/job:localhost}} truncated record at "
                  "4096' failed with Read less bytes than requested [Op:IteratorGetNext] name: ")
    assert record_read_problem(tf.errors.DataLossError(None, None, tf_message)) == "truncated at byte 4096"
    assert record_read_problem(tf.errors.UnknownError(None, None, "inflate failed")) == "inflate failed"
