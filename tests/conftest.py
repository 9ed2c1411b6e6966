"""Shared fixtures: small synthetic data folders in every layout the loader reads.

The images are cheap NumPy fakes (a central galaxy, plus a ring for lenses) so
that tests need neither lenstronomy nor much time. Simulator tests make real
lenstronomy data themselves.
"""

import contextlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name):
    """Import ``benchmarks/NAME.py`` as a module (benchmarks/ is scripts, not a package).

    Example:
        >>> bench = load_benchmark("throughput")
        >>> bench.paired_ratio(times_b, times_a)
    """
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_image(rng, size, lens, channels=1):
    """A (size, size, channels) float32 image: Sersic-ish galaxy, ring if lens, noise."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2.0
    r = np.hypot(xx, yy)
    image = 50.0 * np.exp(-r / (0.08 * size))
    if lens:
        radius = rng.uniform(0.2, 0.35) * size
        image = image + 20.0 * np.exp(-0.5 * ((r - radius) / (0.03 * size)) ** 2)
    image = image[..., None] * rng.uniform(0.5, 1.5, size=channels)
    image = image + rng.normal(0.0, 2.0, size=image.shape)  # sky noise: negatives too
    return image.astype(np.float32)


def write_hst_folder(root, n_lenses, n_nonlenses, size=32, nan_files=0, seed=0):
    """DeepLense HST layout: flat folder, 2-D arrays, `nl_` prefix for non-lenses."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_lenses):
        paths.append((root / f"{i}_hst.npy", True))
    for i in range(n_nonlenses):
        paths.append((root / f"nl_{i}_hst.npy", False))
    for k, (path, lens) in enumerate(paths):
        image = fake_image(rng, size, lens)[..., 0]
        if k < nan_files:
            idx = rng.choice(image.size, size=3, replace=False)
            image.flat[idx] = np.nan
        np.save(path, image)
    return root


def write_class_folders(root, counts, size=32, channels=3, channels_first=True, seed=0):
    """One sub-folder per class; arrays (C, H, W) when channels_first else (H, W, C)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for name, n in counts.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        lens = name not in ("nonlenses", "nonlens", "no_sub")
        for i in range(n):
            image = fake_image(rng, size, lens, channels)
            if channels_first:
                image = np.moveaxis(image, -1, 0)
            np.save(folder / f"{name}_{i}.npy", image)
    return root


@pytest.fixture
def hst_folder(tmp_path):
    """24 lenses + 12 non-lenses, 32x32 single band, 4 files with NaN pixels."""
    return write_hst_folder(tmp_path / "hst", 24, 12, size=32, nan_files=4)


@pytest.fixture
def three_band_folder(tmp_path):
    """`lenses/` and `nonlenses/`, (3, 32, 32) channels-first arrays."""
    return write_class_folders(tmp_path / "3b", {"lenses": 20, "nonlenses": 16})


def write_record_file(path, records):
    """A TFRecord file of the given serialized records, as they are (no manifest)."""
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)


@pytest.fixture(autouse=True)
def _float32_policy():
    """Each test starts from the float32 dtype policy: a mixed-precision test must not leak into the next."""
    yield
    keras = sys.modules.get("keras")  # only if a test imported it: conftest itself stays TF-free
    if keras is not None:
        keras.mixed_precision.set_dtype_policy("float32")


def run_cli(argv, capsys):
    """Run ``kerasssl ARGV`` in this process: (exit code, stdout, stderr)."""
    from kerasssl.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def cli_exit_code(*args):
    """Run ``kerasssl ARGS`` in this process and return its exit code (child processes' tests)."""
    from kerasssl.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return e.code
    return 0


@contextlib.contextmanager
def stop_after_checkpoint(epoch, step):
    """Within it, a pretraining raises ``RuntimeError("stopped")`` right after writing checkpoint
    (``epoch`` epochs done, ``step`` steps into the next): the state a kill leaves there.

    Example:
        >>> with stop_after_checkpoint(1, 2), pytest.raises(RuntimeError, match="stopped"):
        ...     pretrain(cfg, data, run)
    """
    from kerasssl.checkpoints import EpochCheckpoint

    real_save = EpochCheckpoint._save

    def save_then_stop(self, done, at):
        real_save(self, done, at)
        if (done, at) == (epoch, step):
            raise RuntimeError("stopped")

    EpochCheckpoint._save = save_then_stop
    try:
        yield
    finally:
        EpochCheckpoint._save = real_save


def run_until_checkpoint(epoch, step, run):
    """Call ``run()`` under :func:`stop_after_checkpoint`; return "stopped", or "not stopped" if it finished.

    Example:
        >>> assert run_until_checkpoint(1, 1, lambda: pretrain(cfg, data, run)) == "stopped"
    """
    try:
        with stop_after_checkpoint(epoch, step):
            run()
    except RuntimeError as e:
        if str(e) != "stopped":
            raise
        return "stopped"
    return "not stopped"


# -- scores with a known ROC-AUC (evaluate's and metrics' tests) --------------------------

def mann_whitney_auc(labels, scores):
    """Reference ROC-AUC: P(score_pos > score_neg) + 0.5 P(tie), by brute force."""
    pos = scores[labels == 1]
    neg = scores[labels == 0]
    diff = pos[:, None] - neg[None, :]
    return float(np.mean(diff > 0) + 0.5 * np.mean(diff == 0))


def binary_probs(scores):
    return np.stack([1.0 - scores, scores], axis=1)


@pytest.fixture
def scored():
    """60 lenses, 40 non-lenses, separable but overlapping scores with ties across classes."""
    rng = np.random.default_rng(1)
    labels = np.r_[np.ones(60, int), np.zeros(40, int)]
    scores = 1 / (1 + np.exp(-(labels * 1.5 + rng.normal(0, 1, 100))))
    scores[:5] = scores[60:65]  # ties across classes
    return labels, scores
