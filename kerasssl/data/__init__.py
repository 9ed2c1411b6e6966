"""Data layer: read DeepLense-style files, repair, split, feed tf.data.

- :mod:`kerasssl.data.load`: formats and labels (folders, `nl_` prefix, FITS, TFRecord).
- :mod:`kerasssl.data.clean`: NaN/Inf repair, normalisation, crop (NumPy).
- :mod:`kerasssl.data.split`: stratified, seeded splits recorded in the run dir.
- :mod:`kerasssl.data.pipeline`: tf.data input pipelines.

The simulator is its own package, :mod:`kerasssl.simulate`.
"""
