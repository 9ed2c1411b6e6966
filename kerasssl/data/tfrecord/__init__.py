"""Sharded TFRecord files of ``tf.Example``, one record per image file.

- :mod:`~kerasssl.data.tfrecord.records`: the record format (:data:`FEATURES`),
  encode / decode / check one record, and the SavedModel's ``predict_examples``
  parser. Knows nothing of files; the exported model depends on it alone.
- :mod:`~kerasssl.data.tfrecord.shards`: shard files, compression, the
  manifest beside them, and the sequential check that names a bad record.
- :mod:`~kerasssl.data.tfrecord.writer`: a data folder -> shards + manifest
  (``kerasssl convert``).
- :mod:`~kerasssl.data.tfrecord.reader`: shards -> an in-memory ImageSet
  (what ``load_images`` returns for a TFRecord path).
- :mod:`~kerasssl.data.tfrecord.stream`: shards -> a streaming tf.data pipeline.

Readers apply the folder loader's layout rule (``kerasssl.data.arrays.to_hwc``;
the band axis of a whole set is given, recorded in the manifest by
``convert``, or decided from all stored shapes by
``kerasssl.data.arrays.channel_layout``) and its centre crop, in TensorFlow
ops where they run in a graph.

The public API of the modules is importable from here; the modules' shared
plumbing (``record_dataset``, ``parse_record``, ...) from the modules themselves.

Example:
    >>> manifest = write_tfrecords("data/3b", "data/rec", shards=4)
    >>> image_set = load_tfrecords("data/rec/*.tfrecord*")
    >>> images = parse_examples_to_images(serialized, (64, 64, 3))
"""

from kerasssl.data.tfrecord.reader import load_tfrecords
from kerasssl.data.tfrecord.records import (
    FEATURE_DOCS,
    FEATURES,
    IMAGE_FEATURES,
    UNLABELED_FEATURES,
    decode_image,
    decode_record_array,
    encode_example,
    example_problem,
    parse_examples_to_images,
)
from kerasssl.data.tfrecord.shards import (
    COMPRESSIONS,
    MANIFEST_NAME,
    check_shards,
    find_shards,
    read_manifest,
    shard_name,
)
from kerasssl.data.tfrecord.stream import make_tfrecord_dataset
from kerasssl.data.tfrecord.writer import write_tfrecords

__all__ = [
    "COMPRESSIONS", "FEATURES", "FEATURE_DOCS", "IMAGE_FEATURES", "MANIFEST_NAME", "UNLABELED_FEATURES",
    "check_shards", "decode_image", "decode_record_array", "encode_example", "example_problem", "find_shards",
    "load_tfrecords", "make_tfrecord_dataset", "parse_examples_to_images", "read_manifest",
    "shard_name", "write_tfrecords",
]
