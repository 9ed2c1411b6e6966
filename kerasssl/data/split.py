"""Stratified, seeded train / val / test split by hashing file names.

Inside each class, files are ordered by ``sha256(f"{seed}:{relpath}")``; the
first ``round(n * test_fraction)`` are test, the next ``round(n * val_fraction)``
val, the rest train. The labelled subset of train is its first
``labels_fraction`` (at least one per class) in the same hash order, so:

- the split depends only on the seed and the file names, not on listing order
  or on how the data is stored (folders or TFRecord shards: both carry the
  relative paths);
- adding files moves few existing ones (each file keeps its hash rank; only
  the cut points shift with the class size);
- labelled sets are nested: the files labelled at 10 % are also labelled at
  25 %, so label-fraction curves compare like with like.

Every class gets at least one train file, one val and one test file (for a
non-zero fraction) and one labelled file: :func:`make_split` refuses data
with fewer than two classes or a class too small for that, in one line that
names the data and the counts, before anything trains on it.

The split is recorded as file lists in ``RUN/split.json``; later commands
reuse it, so evaluation never sees training files.

Example:
    >>> split = make_split(data, val_fraction=0.15, test_fraction=0.15,
    ...                    labels_fraction=0.1, seed=0)
    >>> train = data.subset(split.indices(data, "train"))
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

import numpy as np

from kerasssl.config import SPLIT_NAMES
from kerasssl.errors import DataError, KerassslError
from kerasssl.rundir import RunDir, read_json, write_json_atomic

logger = logging.getLogger(__name__)


def hash_rank_key(seed: int, relpath: str) -> str:
    """Sort key of a file inside its class: hex sha256 of ``"{seed}:{relpath}"``."""
    return hashlib.sha256(f"{seed}:{relpath}".encode("utf-8")).hexdigest()


def _check_fraction(name, value, low_open=False):
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = numeric and ((0.0 < value <= 1.0) if low_open else (0.0 <= value < 1.0))
    if not ok:
        interval = "(0, 1]" if low_open else "[0, 1)"
        raise KerassslError(f"{name} must be in {interval}, got {value!r}")


def _held_out_parts(val_fraction, test_fraction):
    """The held-out parts each class must have a file in: ["val", "test"] or fewer."""
    return [name for name, f in (("val", val_fraction), ("test", test_fraction)) if f > 0]


def _cut_sizes(n, val_fraction, test_fraction):
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    if n >= 1 + len(_held_out_parts(val_fraction, test_fraction)):
        # Small classes: one file in each non-empty part before rounding takes it away.
        n_test = max(n_test, 1 if test_fraction > 0 else 0)
        n_val = max(n_val, 1 if val_fraction > 0 else 0)
    # Train keeps at least one file: take back from val first, then test.
    while n_test + n_val > n - 1 and (n_val or n_test):
        if n_val:
            n_val -= 1
        else:
            n_test -= 1
    return n_test, n_val


def _labeled_count(n_train, labels_fraction):
    if n_train == 0:
        return 0
    return min(n_train, max(1, int(round(n_train * labels_fraction))))


@dataclass
class Split:
    """File lists of one split, as recorded in ``RUN/split.json``.

    Args:
        train / val / test: relative paths (ImageSet ``files`` ids), in the data's order.
        labeled: the subset of train whose labels fine-tuning may use.
        unlabeled: train minus labeled.
        seed, val_fraction, test_fraction, labels_fraction: how it was made.
        class_names: the data's classes (for the record).
        counts: split name -> class name -> number of files (for the record).
    """

    train: List[str]
    val: List[str]
    test: List[str]
    labeled: List[str]
    unlabeled: List[str]
    seed: int
    val_fraction: float
    test_fraction: float
    labels_fraction: float
    class_names: List[str] = field(default_factory=list)
    counts: Dict[str, Dict[str, int]] = field(default_factory=dict)

    def files(self, name: str) -> List[str]:
        """The file list of split ``name`` (train, val, test, labeled, unlabeled)."""
        if name not in SPLIT_NAMES:
            raise KerassslError(f"unknown split {name!r}; choose one of {', '.join(SPLIT_NAMES)}")
        return getattr(self, name)

    def indices(self, image_set, name: str) -> np.ndarray:
        """Row indices of split ``name``'s files in ``image_set`` (int64, list order).

        Raises:
            KerassslError: a file of the split is not in the data.
        """
        files = self.files(name)
        position = {f: i for i, f in enumerate(image_set.files)}
        missing = [f for f in files if f not in position]
        if missing:
            raise KerassslError(
                f"split {name!r} names {len(missing)} file(s) absent from {image_set.root} "
                f"(e.g. {missing[0]}); was the split made on other data?"
            )
        return np.array([position[f] for f in files], dtype=np.int64)

    def with_labels_fraction(self, image_set, labels_fraction: float) -> "Split":
        """The same train/val/test with ``labeled`` re-derived for a new fraction.

        Uses the class of each train file in ``image_set`` and the same hash
        order, so a smaller fraction's labelled files are a subset of a larger one's.

        Example:
            >>> split10 = split.with_labels_fraction(data, 0.1)
        """
        _check_fraction("labels fraction", labels_fraction, low_open=True)
        rows = self.indices(image_set, "train")
        labels = image_set.labels[rows]
        train_set = set(self.train)
        labeled = set()
        for k in range(len(image_set.class_names)):
            members = [self.train[i] for i in np.flatnonzero(labels == k)]
            members.sort(key=lambda f: hash_rank_key(self.seed, f))
            labeled.update(members[:_labeled_count(len(members), labels_fraction)])
        in_order = [f for f in image_set.files if f in train_set]
        return _build(
            image_set, in_order, self.val, self.test, labeled, self.seed,
            self.val_fraction, self.test_fraction, labels_fraction,
        )

    # -- persistence -----------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "labels_fraction": self.labels_fraction,
            "class_names": list(self.class_names),
            "counts": self.counts,
            **{name: list(getattr(self, name)) for name in SPLIT_NAMES},
        }

    def save(self, path) -> None:
        """Write as JSON atomically (never half-written)."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path) -> "Split":
        """Read a split written by :meth:`save`.

        Raises:
            KerassslError: missing, invalid or incomplete file.
        """
        path = Path(path)
        raw = read_json(path, "split file")
        required = set(SPLIT_NAMES) | {"seed", "val_fraction", "test_fraction", "labels_fraction"}
        if not isinstance(raw, dict) or required - set(raw):
            missing = sorted(required - set(raw)) if isinstance(raw, dict) else sorted(required)
            raise KerassslError(f"{path}: not a split file (missing {', '.join(missing)})")
        for name in SPLIT_NAMES:
            if not isinstance(raw[name], list) or not all(isinstance(f, str) for f in raw[name]):
                raise KerassslError(f"{path}: {name!r} must be a list of file names")
        return cls(
            **{name: list(raw[name]) for name in SPLIT_NAMES},
            seed=int(raw["seed"]),
            val_fraction=float(raw["val_fraction"]),
            test_fraction=float(raw["test_fraction"]),
            labels_fraction=float(raw["labels_fraction"]),
            class_names=list(raw.get("class_names") or []),
            counts=dict(raw.get("counts") or {}),
        )


def _build(image_set, train, val, test, labeled, seed, val_fraction, test_fraction,
           labels_fraction) -> Split:
    """A Split with every list in the data's order, plus per-class counts."""
    order = {f: i for i, f in enumerate(image_set.files)}
    ordered = lambda files: sorted(files, key=order.__getitem__)  # noqa: E731
    labeled = set(labeled)
    lists = {
        "train": ordered(train),
        "val": ordered(val),
        "test": ordered(test),
        "labeled": ordered(labeled),
        "unlabeled": ordered(f for f in train if f not in labeled),
    }
    label_of = dict(zip(image_set.files, image_set.labels.tolist()))
    counts = {}
    for name, files in lists.items():
        per = np.bincount([label_of[f] for f in files], minlength=len(image_set.class_names))
        counts[name] = {c: int(per[k]) for k, c in enumerate(image_set.class_names)}
    return Split(
        **lists, seed=int(seed), val_fraction=float(val_fraction),
        test_fraction=float(test_fraction), labels_fraction=float(labels_fraction),
        class_names=list(image_set.class_names), counts=counts,
    )


def make_split(image_set, val_fraction: float = 0.15, test_fraction: float = 0.15,
               labels_fraction: float = 1.0, seed: int = 0) -> Split:
    """Stratified, seeded split of an ImageSet by hashing its file names.

    Args:
        image_set: the data (:class:`kerasssl.data.load.ImageSet`).
        val_fraction / test_fraction: per-class held-out fractions.
        labels_fraction: fraction of each class's train files that are labelled
            (at least one per class); the rest is ``unlabeled``.
        seed: hash seed.

    Returns:
        :class:`Split`.

    Raises:
        KerassslError: bad fractions, duplicate file names.
        DataError: fewer than two classes, or a class too small to give one
            file to train and to each non-empty held-out part
            (:func:`check_class_counts`).

    Example:
        >>> split = make_split(data, 0.15, 0.15, labels_fraction=0.25, seed=1)
        >>> len(split.labeled) + len(split.unlabeled) == len(split.train)
        True
    """
    _check_fraction("val fraction", val_fraction)
    _check_fraction("test fraction", test_fraction)
    _check_fraction("labels fraction", labels_fraction, low_open=True)
    if val_fraction + test_fraction >= 1.0:
        raise KerassslError(
            f"val fraction + test fraction must be < 1, got {val_fraction} + {test_fraction}"
        )
    if len(set(image_set.files)) != len(image_set.files):
        raise KerassslError(f"{image_set.root}: file names are not unique; cannot record a split")
    labels = np.asarray(image_set.labels)
    check_class_counts(image_set, val_fraction, test_fraction)
    train, val, test, labeled = [], [], [], []
    for k in range(len(image_set.class_names)):
        members = [image_set.files[i] for i in np.flatnonzero(labels == k)]
        members.sort(key=lambda f: hash_rank_key(seed, f))
        n_test, n_val = _cut_sizes(len(members), val_fraction, test_fraction)
        test += members[:n_test]
        val += members[n_test:n_test + n_val]
        class_train = members[n_test + n_val:]
        train += class_train
        labeled += class_train[:_labeled_count(len(class_train), labels_fraction)]
    return _build(image_set, train, val, test, labeled, seed, val_fraction, test_fraction,
                  labels_fraction)


def check_class_counts(image_set, val_fraction: float, test_fraction: float) -> None:
    """Refuse data a classifier cannot be trained and evaluated on, before any training.

    Needs at least two classes with images, and in every class enough images for
    one train file plus one val and one test file where those fractions are
    non-zero (the labelled subset then holds at least one per class too: it
    takes at least one of each class's train files at any labels fraction).

    Raises:
        DataError: one line naming the data, the images per class and what is needed.

    Example:
        >>> check_class_counts(data, 0.15, 0.15)  # 1 class or a class of 2: DataError
    """
    counts = image_set.class_counts()
    listed = ", ".join(f"{name} {n}" for name, n in counts.items())
    with_images = [name for name, n in counts.items() if n > 0]
    if len(with_images) < 2:
        only = f"only class {with_images[0]!r} has" if with_images else "no class has"
        raise DataError(
            image_set.root,
            f"{only} images (images per class: {listed}); a classifier needs images of at "
            "least two classes to fine-tune and evaluate",
        )
    parts = _held_out_parts(val_fraction, test_fraction)
    need = 1 + len(parts)
    short = [name for name, n in counts.items() if n < need]
    if short:
        where = {"val": f"val fraction {val_fraction:g}", "test": f"test fraction {test_fraction:g}"}
        held = "".join(f", 1 {p}" for p in parts)
        at = f" at {' and '.join(where[p] for p in parts)}" if parts else ""
        raise DataError(
            image_set.root,
            f"class{'es' if len(short) > 1 else ''} {', '.join(map(repr, short))} "
            f"ha{'ve' if len(short) > 1 else 's'} too few images (images per class: {listed}); "
            f"each class needs at least {need} (1 train{held}{at})",
        )


def check_split(run_dir, image_set, data_cfg, labels_fraction=None) -> Split:
    """The split :func:`load_or_create_split` will give this run, without writing it.

    Refuses what it refuses (a recorded split naming files absent from the data,
    bad fractions, too few images per class), so a stage can fail before its
    first write; it calls :func:`load_or_create_split` once it is accepted.

    Args:
        run_dir: the run directory (need not exist).
        image_set / data_cfg / labels_fraction: as for :func:`load_or_create_split`.

    Example:
        >>> split = check_split("runs/a", image_set, cfg.data, labels_fraction=0.1)  # writes nothing
    """
    return _run_split(RunDir(run_dir).split, image_set, data_cfg, labels_fraction)[0]


def load_or_create_split(run_dir, image_set, data_cfg, labels_fraction=None) -> Split:
    """The run's split: read ``RUN/split.json``, or make it from ``data_cfg`` and write it.

    An existing split wins over ``data_cfg`` (a run keeps its split; a changed
    seed or fraction is logged and ignored). A different ``labels_fraction``
    re-derives ``labeled`` from the same train list and rewrites the file.

    Args:
        run_dir: the run directory.
        image_set: the data.
        data_cfg: :class:`kerasssl.config.DataConfig` (val_fraction,
            test_fraction, seed).
        labels_fraction: fraction of train whose labels may be used; None keeps
            the run's recorded one (1.0 for a new split), so a stage that uses no
            labels (pretraining) does not undo a fine-tuning's choice.

    Raises:
        KerassslError: the recorded split names files absent from the data.

    Example:
        >>> split = load_or_create_split("runs/a", data, cfg.data, labels_fraction=0.1)
    """
    path = RunDir(run_dir).split
    recorded = path.exists()
    split, changed = _run_split(path, image_set, data_cfg, labels_fraction)
    if recorded:
        wanted = (data_cfg.seed, data_cfg.val_fraction, data_cfg.test_fraction)
        if wanted != (split.seed, split.val_fraction, split.test_fraction):
            logger.warning(
                "%s: keeping the run's recorded split (seed %s, val %s, test %s); the config's "
                "seed %s, val %s, test %s apply to new runs only",
                path, split.seed, split.val_fraction, split.test_fraction, *wanted,
            )
        extra = len(set(image_set.files)) - len(set(split.train + split.val + split.test))
        if extra > 0:
            logger.warning("%s: %d file(s) of the data are not in the run's split and are unused",
                           path, extra)
    if changed:
        split.save(path)
        if recorded:
            logger.info("%s: labeled set re-derived for labels fraction %s", path, labels_fraction)
    return split


def _run_split(path, image_set, data_cfg, labels_fraction):
    """``(split, new)``: the split recorded at ``path`` (checked against the data, its
    labelled set re-derived for ``labels_fraction``) or a new one; ``new`` when it
    differs from what ``path`` holds."""
    if not path.exists():
        labels_fraction = 1.0 if labels_fraction is None else labels_fraction
        return make_split(image_set, data_cfg.val_fraction, data_cfg.test_fraction,
                          labels_fraction, data_cfg.seed), True
    split = Split.load(path)
    known = set(image_set.files)
    missing = [f for f in split.train + split.val + split.test if f not in known]
    if missing:
        raise KerassslError(
            f"{path}: the run's split names {len(missing)} file(s) absent from "
            f"{image_set.root} (e.g. {missing[0]}); use the run's data or a new run directory"
        )
    if labels_fraction is not None and not np.isclose(labels_fraction, split.labels_fraction):
        return split.with_labels_fraction(image_set, labels_fraction), True
    return split, False
