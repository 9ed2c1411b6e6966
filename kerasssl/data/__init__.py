"""Data layer: read DeepLense-style files, repair, split, feed tf.data.

Leaves first (each module imports only those above it):

- :mod:`kerasssl.data.arrays`: one file -> one array (.npy / FITS readers, header checks, band axis).
- :mod:`kerasssl.data.imageset`: :class:`ImageSet` and the shape rules of every reader (crop, one shape).
- :mod:`kerasssl.data.clean`: NumPy reference for NaN/Inf repair, normalisation, statistics.
- :mod:`kerasssl.data.folders`: what a data folder holds (layouts, classes, files), no pixels read.
- :mod:`kerasssl.data.tfrecord`: TFRecord shards: record format, shard files, writer, reader, stream.
- :mod:`kerasssl.data.load`: any DATA path (folder or shards) -> ImageSet.
- :mod:`kerasssl.data.split`: stratified, seeded splits recorded in the run dir.
- :mod:`kerasssl.data.pipeline`: tf.data input pipelines.
- :mod:`kerasssl.data.samples`: the images that check an export (calibration, parity, val AUC).

The simulator is its own package, :mod:`kerasssl.simulate`.
"""
