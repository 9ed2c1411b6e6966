"""kerasssl: self-supervised learning for strong-lensing images with Keras 3.

Sub-packages are imported lazily so that `import kerasssl` stays cheap
(the CLI's `--help` must not pay for TensorFlow start-up):

- ``kerasssl.data``: read DeepLense-style data, repair, split, tf.data.
- ``kerasssl.simulate``: simulated lens / non-lens data sets and unlabeled pools (lenstronomy).
- ``kerasssl.layers``: augmentation and preprocessing Keras layers.
- ``kerasssl.encoders`` / ``kerasssl.heads`` / ``kerasssl.losses``: building blocks.
- ``kerasssl.methods``: SimCLR, BYOL, SimSiam, Barlow Twins, VICReg (registry).
- ``kerasssl.finetune`` / ``kerasssl.evaluate`` / ``kerasssl.export``.
"""

__version__ = "0.1.0"

from kerasssl.errors import KerassslError, DataError  # noqa: E402,F401
