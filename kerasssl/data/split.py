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

With a grouping (``data.group_by`` / ``data.groups``, :mod:`kerasssl.data.groups`)
the unit is the object, not the file: every group falls wholly in train, val or
test (:func:`kerasssl.data.groups.assign_groups`: greedy, seeded, per-class counts
close to the per-file cut sizes), and ``split.json`` also records the rule
(``grouping``) and the groups per part (``group_counts``). The labelled subset is
still drawn per file, inside train: labelled and unlabelled files both train
(pretraining reads the whole train split), so an object split between them
leaks nothing into val or test, and the labelled sets stay nested. A split
without a grouping is exactly the per-file split above (same files, same
``split.json`` bytes).

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
from typing import Dict, List, Optional

import numpy as np

from kerasssl.config import SPLIT_NAMES
from kerasssl.data.groups import Grouping, assign_groups, check_group_counts, group_counts
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
        grouping: the rule that grouped files into objects
            (:meth:`kerasssl.data.groups.Grouping.record`), or None for a per-file split.
        group_counts: train/val/test -> number of groups in it (grouped splits only).
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
    grouping: Optional[dict] = None
    group_counts: Optional[Dict[str, int]] = None

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
            grouping=self.grouping, group_counts=self.group_counts,
        )

    # -- persistence -----------------------------------------------------------

    def to_dict(self) -> dict:
        # A per-file split writes no grouping keys: its split.json is what it always was.
        grouped = {} if self.grouping is None else {"grouping": dict(self.grouping),
                                                    "group_counts": dict(self.group_counts or {})}
        return {
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "labels_fraction": self.labels_fraction,
            "class_names": list(self.class_names),
            "counts": self.counts,
            **grouped,
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
            grouping=_grouping_record(path, raw.get("grouping")),
            group_counts=dict(raw["group_counts"]) if raw.get("grouping") and raw.get("group_counts") else None,
        )


def _grouping_record(path, value) -> Optional[dict]:
    if value is None:
        return None
    if not isinstance(value, dict) or not (isinstance(value.get("group_by"), str)
                                           or isinstance(value.get("sha256"), str)):
        raise KerassslError(f"{path}: 'grouping' must name a group_by regex or a groups CSV's sha256")
    return dict(value)


def _build(image_set, train, val, test, labeled, seed, val_fraction, test_fraction,
           labels_fraction, grouping=None, group_counts=None) -> Split:
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
        grouping=None if grouping is None else dict(grouping),
        group_counts=None if grouping is None else dict(group_counts),
    )


def make_split(image_set, val_fraction: float = 0.15, test_fraction: float = 0.15,
               labels_fraction: float = 1.0, seed: int = 0, grouping: Optional[Grouping] = None) -> Split:
    """Stratified, seeded split of an ImageSet by hashing its file names.

    Args:
        image_set: the data (:class:`kerasssl.data.load.ImageSet`).
        val_fraction / test_fraction: per-class held-out fractions.
        labels_fraction: fraction of each class's train files that are labelled
            (at least one per class); the rest is ``unlabeled``.
        seed: hash seed.
        grouping: a :class:`kerasssl.data.groups.Grouping` (objects stay whole:
            :func:`kerasssl.data.groups.assign_groups`), or None: per file.

    Returns:
        :class:`Split`.

    Raises:
        KerassslError: bad fractions, duplicate file names.
        DataError: fewer than two classes, or a class too small to give one
            file to train and to each non-empty held-out part
            (:func:`check_class_counts`); with a grouping, files it cannot
            group, or classes in too few groups to fill every part.

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
    if grouping is not None:
        return _make_grouped_split(image_set, labels, val_fraction, test_fraction, labels_fraction, seed, grouping)
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


def _make_grouped_split(image_set, labels, val_fraction, test_fraction, labels_fraction, seed, grouping):
    """make_split with every group of ``grouping`` wholly in one part; labelled per file inside train."""
    ids = grouping.group_ids(image_set)
    n_classes = len(image_set.class_names)
    parts = ["train"] + _held_out_parts(val_fraction, test_fraction)
    check_group_counts(ids, labels, list(image_set.class_names), parts, image_set.root, grouping.describe())
    targets = {"test": np.zeros(n_classes, np.int64), "val": np.zeros(n_classes, np.int64)}
    for k in range(n_classes):
        targets["test"][k], targets["val"][k] = _cut_sizes(int(np.sum(labels == k)), val_fraction, test_fraction)
    part_of = assign_groups(ids, labels, n_classes, targets, seed, hash_rank_key, root=image_set.root,
                            class_names=list(image_set.class_names), describe=grouping.describe())
    lists = {"train": [], "val": [], "test": []}
    for f, g in zip(image_set.files, ids):
        lists[part_of[g]].append(f)
    train_set = set(lists["train"])
    labeled = []
    for k in range(n_classes):
        members = [f for f, lab in zip(image_set.files, labels) if lab == k and f in train_set]
        members.sort(key=lambda f: hash_rank_key(seed, f))
        labeled += members[:_labeled_count(len(members), labels_fraction)]
    return _build(image_set, lists["train"], lists["val"], lists["test"], labeled, seed, val_fraction,
                  test_fraction, labels_fraction, grouping=grouping.record(), group_counts=group_counts(part_of))


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
                          labels_fraction, data_cfg.seed, grouping=Grouping.from_config(data_cfg)), True
    split = Split.load(path)
    _check_same_grouping(path, split, Grouping.from_config(data_cfg))
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


def _check_same_grouping(path, split, wanted: Optional[Grouping]) -> None:
    """Refuse a recorded split whose grouping rule is not the one asked for.

    Unlike a changed seed or fraction (logged; the run keeps its split), a
    changed grouping is refused: it says which files are one object, so a run
    kept on the old rule would evaluate on what the new rule calls leaked files.
    A CSV is compared by content (sha256), so a moved copy is the same rule.
    """
    recorded = Grouping.from_record(split.grouping)
    if recorded is None and wanted is None:
        return
    if recorded is not None and recorded.same_rule(wanted):
        return
    was = recorded.describe() if recorded is not None else "no grouping (one file per group)"
    now = wanted.describe() if wanted is not None else "no grouping"
    raise KerassslError(f"{path}: the run's split was made with {was}, the config asks for {now}; "
                        "use the run's grouping or a new run directory")
